#!/usr/bin/env bash
# Fails when modules of a crate import each other in a cycle (a lower module must never import a
# higher one): for every crate, the edges between sibling modules from `use` trees and `crate::`,
# `super::`, `self::` paths, at every level of the module tree; each cycle is printed with the file
# and line of its imports (scripts/layers/check_layers.py). CI runs it before the tests.
# Needs only python3 (standard library); takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m unittest discover -s scripts/layers -p 'test_*.py' -q
exec "$PYTHON" scripts/layers/check_layers.py .
