#!/usr/bin/env bash
# Creates the project's virtual environment (.venv: torch CPU build, test tools) and builds nbdist
# into it. Idempotent: dependencies are installed once, and the C++ build is redone (incrementally,
# in build/) only when a C++ or build file changed. Override the interpreter with PYTHON=...
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv=${NBDIST_VENV:-$root/.venv}
py=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
  echo "nbdist setup: creating $venv" >&2
  "$py" -m venv "$venv"
fi
deps_stamp=$venv/.nbdist-deps
if [ ! -f "$deps_stamp" ] || [ scripts/setup.sh -nt "$deps_stamp" ]; then
  echo "nbdist setup: installing torch and the test tools" >&2
  # torch 2.13.0 is the CPU build on the development machines; the extension is built against
  # whatever torch is in the environment, so any version works (pip install --no-build-isolation).
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    "torch==${NBDIST_TORCH_VERSION:-2.13.0}" numpy cloudpickle psutil \
    pybind11 scikit-build-core ninja cmake \
    pytest pytest-timeout nbclient nbformat ipykernel matplotlib accelerate
  touch "$deps_stamp"
fi
build_stamp=$venv/.nbdist-build
if [ ! -f "$build_stamp" ] ||
  [ -n "$(find csrc CMakeLists.txt pyproject.toml -newer "$build_stamp" -print -quit)" ]; then
  echo "nbdist setup: building the C++ extensions" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation \
    --no-deps -e .
  touch "$build_stamp"
fi
