#!/usr/bin/env bash
# Renders every layout under k8s/ with the project's own kustomize subset (scripts/k8s/kustomize_lite.py,
# no kustomize binary needed) and validates each rendered resource against the Kubernetes schemas of
# the pinned versions (PyPI kubernetes-validate, strict) plus the project's policy checks and the
# binaries' command-line flags (scripts/k8s/validate.py). Exits non-zero on any problem. CI runs it.
#
# Installs its Python packages into .venv-k8s/ (git-ignored) on first use; afterwards it works offline.
# Environment: PYTHON (default python3), EVALFLEET_KUBE_VERSIONS (default below: the oldest version
# the manifests need, 1.33 for Job successPolicy / backoffLimitPerIndex, and the newest one pinned).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-k8s"
PYTHON="${PYTHON:-python3}"
KUBE_VERSIONS="${EVALFLEET_KUBE_VERSIONS:-1.33.0 1.37.0}"
# Pinned: the schema set (and so the verdict) must not change under us.
REQUIREMENTS=(kubernetes-validate==1.37.0 PyYAML==6.0.3)

stamp="$VENV/.evalfleet-requirements"
if [[ ! -x "$VENV/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "${REQUIREMENTS[*]}" ]]; then
  echo "k8s-validate: installing ${REQUIREMENTS[*]} into .venv-k8s" >&2
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}"
  printf '%s' "${REQUIREMENTS[*]}" >"$stamp"
fi

"$VENV/bin/python" -m unittest discover -s "$ROOT/scripts/k8s" -p 'test_*.py' -q
# shellcheck disable=SC2086 # one argument per version
exec "$VENV/bin/python" "$ROOT/scripts/k8s/validate.py" "$ROOT" $KUBE_VERSIONS
