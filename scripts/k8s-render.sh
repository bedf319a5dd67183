#!/usr/bin/env bash
# Prints the manifests of one k8s/ layout, rendered without a kustomize binary, e.g.
#   scripts/k8s-render.sh k8s/overlays/fleet | kubectl apply -f -
# (`kubectl apply -k FOLDER` renders the same folders with kubectl's built-in kustomize).
#   scripts/k8s-render.sh --update    rewrites k8s/rendered/<layout>.yaml for every overlay; those
#                                     files are committed (read by the Rust rehearsal test
#                                     coordinator/tests/k8s_rehearsal.rs), and scripts/k8s-validate.sh
#                                     fails when they are stale.
# Uses the .venv-k8s/ that scripts/k8s-validate.sh creates, else any python3 with PyYAML.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ $# -eq 1 ]] || { echo "usage: $0 KUSTOMIZATION_FOLDER (e.g. k8s/overlays/oneshot) | --update" >&2; exit 2; }
PY="$ROOT/.venv-k8s/bin/python"
[[ -x "$PY" ]] || PY="${PYTHON:-python3}"
if [[ "$1" == "--update" ]]; then
  mkdir -p "$ROOT/k8s/rendered"
  for overlay in "$ROOT"/k8s/overlays/*/; do
    name="$(basename "$overlay")"
    "$PY" "$ROOT/scripts/k8s/kustomize_lite.py" "$overlay" >"$ROOT/k8s/rendered/$name.yaml"
    echo "wrote k8s/rendered/$name.yaml" >&2
  done
  exit 0
fi
exec "$PY" "$ROOT/scripts/k8s/kustomize_lite.py" "$1"
