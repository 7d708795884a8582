#!/usr/bin/env bash
# The main job: builds nbdist (scripts/setup.sh) and runs a demo of nbdist.launch: every visible
# GPU with NCCL, or 2 CPU ranks with Gloo when there is no GPU. Prints the ranks' results.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
exec "$root/.venv/bin/python" "$root/scripts/demo.py" "$@"
