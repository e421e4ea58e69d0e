# The two commands a newcomer needs: `make demo` (the main job on the embedded default) and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
export PATH := $(CURDIR)/.venv/bin:$(PATH)
# The venv is shared between checkouts (content-keyed cache); this checkout's sources win on the path, in
# every process make starts (tests, their subprocesses, `vllm serve`, the operator).
export PYTHONPATH := $(CURDIR)/operator:$(CURDIR)/runtime:$(CURDIR)/kernels:$(CURDIR)/devcluster:$(CURDIR)/cli

.PHONY: setup venv control-plane data-plane test test-fast lint crd dashboard demo demo-down clean-dev

setup: venv control-plane data-plane

venv:
	@./scripts/setup-venv.sh

control-plane:
	@./devcluster/build-control-plane.sh >/dev/null

# Debian's haproxy (the dev cluster's service proxy) and prometheus (+ promtool).
data-plane:
	@./devcluster/install-data-plane.sh

# The whole suite: unit, kernels, runtime on real vLLM, operator e2e on the real control plane.
test: setup
	$(PY) -m pytest -q -ra

# Without the slow engine/cluster tests (for quick iteration only; CI runs `make test`).
test-fast: venv
	$(PY) -m pytest -q -m "not e2e and not vllm and not slow"

lint: venv
	$(PY) -m ruff check operator runtime kernels devcluster cli tests benchmarks
	$(PY) -m mypy operator/localattn_operator cli/localattn_cli cli/localattn_contract devcluster/localattn_dev kernels/localattn_kernels runtime/localattn_runtime
	.venv/bin/lint-imports

# The CRD is generated from the pydantic models (plus a variant with CEL rules for Kubernetes >= 1.25); the chart
# ships a byte-identical copy of the plain one; docs/crd-reference.md is generated from the same schema.
crd: venv
	.venv/bin/localattn crd generate --out crds/localattndeployment.yaml
	.venv/bin/localattn crd generate --cel --out crds/localattndeployment-cel.yaml
	cp crds/localattndeployment.yaml helm/localattn/crds/localattndeployment.yaml
	.venv/bin/localattn crd docs --out docs/crd-reference.md

# The Grafana dashboard is generated (grafanalib) from the operator's query templates; the chart ships a
# byte-identical copy for its optional ConfigMap.
dashboard: venv
	.venv/bin/localattn dashboard --out dashboards/localattn.json --out helm/localattn/dashboards/localattn.json

demo: setup
	@./scripts/demo.sh

demo-down: venv
	@./scripts/demo-down.sh
