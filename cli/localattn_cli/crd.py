"""`localattn crd generate|docs|apply`: the CRD, and its reference page, generated from the pydantic models;
`apply` installs the variant the cluster's version can take (with CEL rules from Kubernetes 1.25 on)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

TIMEOUT = (10.0, 30.0)  # (connect, read) seconds for each API call


def _generate(args: argparse.Namespace) -> int:
    from localattn_operator.crd import render_yaml

    text = render_yaml(cel=args.cel)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    return 0


def _docs(args: argparse.Namespace) -> int:
    from localattn_operator.crd_docs import render_markdown

    text = render_markdown()
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    return 0


def _call(api: Any, method: str, path: str, body: Any = None, query: list[tuple[str, str]] | None = None,
          content_type: str = "application/json") -> Any:
    from kubernetes.client.exceptions import ApiException

    method, url, headers, body, _ = api.param_serialize(
        method, path, query_params=query or [], body=body, auth_settings=["BearerToken"],
        header_params={"Content-Type": content_type, "Accept": "application/json"})
    response = api.call_api(method, url, header_params=headers, body=body, _request_timeout=TIMEOUT)
    response.read()
    if not 200 <= response.status < 300:
        raise ApiException(http_resp=response)
    return json.loads(response.data) if response.data else None


def _apply(args: argparse.Namespace) -> int:
    """Server-side apply of the variant the server takes: the server's /version decides (`--cel`/`--no-cel`
    override it). 1.20-1.24 refuse `x-kubernetes-validations`, so the plain CRD goes there."""
    from kubernetes.client.exceptions import ApiException

    from localattn_operator.crd import build_crd, wants_cel
    from localattn_operator.k8s import error_message, load_api_client

    api = load_api_client(args.kubeconfig)
    version = _call(api, "GET", "/version")
    cel = wants_cel(version) if args.cel is None else args.cel
    doc = build_crd(cel)
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{doc['metadata']['name']}"
    try:
        _call(api, "PATCH", path, body=doc, content_type="application/apply-patch+yaml",
              query=[("fieldManager", "localattn-crd"), ("force", "true")])
    except ApiException as exc:
        print(f"error: the apiserver refused the CRD: {error_message(exc)}", file=sys.stderr)
        return 1
    print(f"customresourcedefinition/{doc['metadata']['name']} applied "
          f"({'with' if cel else 'without'} CEL rules; server {version.get('gitVersion', '?')})")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    crd = subparsers.add_parser("crd", help="the LocalAttnDeployment CustomResourceDefinition")
    verbs = crd.add_subparsers(dest="verb", metavar="VERB", required=True)
    gen = verbs.add_parser("generate", help="print the CRD YAML generated from the models")
    gen.add_argument("--out", help="write to this file instead of stdout")
    gen.add_argument("--cel", action="store_true",
                     help="the variant with CEL rules (x-kubernetes-validations) for Kubernetes >= 1.25")
    gen.set_defaults(func=_generate)
    docs = verbs.add_parser("docs", help="print the CRD reference (Markdown) generated from the same schema")
    docs.add_argument("--out", help="write to this file instead of stdout (docs/crd-reference.md)")
    docs.set_defaults(func=_docs)
    apply = verbs.add_parser("apply", help="install or upgrade the CRD (server-side apply), the variant the server takes")
    apply.add_argument("--kubeconfig", help="default: $KUBECONFIG, ~/.kube/config, or in-cluster")
    choice = apply.add_mutually_exclusive_group()
    choice.add_argument("--cel", dest="cel", action="store_true", default=None, help="force the CEL variant")
    choice.add_argument("--no-cel", dest="cel", action="store_false", help="force the plain variant")
    apply.set_defaults(func=_apply)
