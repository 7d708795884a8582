#!/usr/bin/env bash
# Runs the whole test suite (CPU; GPU tests skip cleanly without CUDA). Arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
cd "$root"
exec "$root/.venv/bin/python" -m pytest "$@"
