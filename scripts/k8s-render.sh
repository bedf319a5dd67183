#!/usr/bin/env bash
# Prints the manifests of one k8s/ layout, rendered without a kustomize binary, e.g.
#   scripts/k8s-render.sh k8s/overlays/fleet | kubectl apply -f -
# (`kubectl apply -k FOLDER` renders the same folders with kubectl's built-in kustomize).
# Uses the .venv-k8s/ that scripts/k8s-validate.sh creates, else any python3 with PyYAML.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ $# -eq 1 ]] || { echo "usage: $0 KUSTOMIZATION_FOLDER (e.g. k8s/overlays/oneshot)" >&2; exit 2; }
PY="$ROOT/.venv-k8s/bin/python"
[[ -x "$PY" ]] || PY="${PYTHON:-python3}"
exec "$PY" "$ROOT/scripts/k8s/kustomize_lite.py" "$1"
