#!/usr/bin/env bash
# `make demo`: the main job on the embedded default. Brings up the local control plane (real etcd,
# kube-apiserver, controller-manager, scheduler, fake GPU nodes), installs the CRD, runs the operator,
# applies examples/deployment.yaml, and shows what the operator made of it. `make demo-down` stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
state="$PWD/.localattn"
mkdir -p "$state"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "local control plane"
localattn dev up
KUBECONFIG="$(localattn dev kubeconfig)"
export KUBECONFIG
kubectl get nodes -o wide

step "CRD (generated from the pydantic models)"
kubectl apply -f crds/localattndeployment.yaml
kubectl wait --for condition=established --timeout=60s crd/localattndeployments.localattn.dev

step "operator"
if [ -f "$state/operator.pid" ] && kill -0 "$(cat "$state/operator.pid")" 2>/dev/null; then
  echo "already running (pid $(cat "$state/operator.pid"))"
else
  setsid localattn operator run --metrics-port 0 >"$state/operator.log" 2>&1 &
  echo $! >"$state/operator.pid"
  echo "started (pid $!, log $state/operator.log)"
fi

step "the model volume: kubectl apply -f examples/model-pvc.yaml"
kubectl apply -f examples/model-pvc.yaml
for _ in $(seq 60); do
  [ "$(kubectl get pvc models -o jsonpath='{.status.phase}')" = Bound ] && break
  sleep 0.5
done

step "kubectl apply -f examples/deployment.yaml"
kubectl apply -f examples/deployment.yaml
echo "waiting for the LocalAttnDeployment to become Ready..."
kubectl wait --for condition=Ready --timeout=120s lad/tiny-llama

step "what the operator made"
kubectl get lad,deployments,services,configmaps,pods -l app.kubernetes.io/instance=tiny-llama -o wide
kubectl get lad tiny-llama
step "runtime configuration (ConfigMap tiny-llama-runtime)"
kubectl get configmap tiny-llama-runtime -o jsonpath='{.data.localattn\.json}'; echo
step "status and events"
kubectl describe lad tiny-llama | sed -n '/^Status:/,$p'

cat <<MSG

Try:  export KUBECONFIG=$KUBECONFIG
      kubectl scale lad tiny-llama --replicas 3 && kubectl get lad -w
      kubectl patch lad tiny-llama --type merge -p '{"spec":{"localAttention":{"windowSize":1024}}}'
Stop: make demo-down
MSG
