#!/usr/bin/env bash
# One set-up for every path that runs the project: `make serve`, `make test`, CI and the
# Dockerfile all call this script, so the container installs exactly what was tested.
#
#   VENV=.venv            where the virtual environment lives ("none": install into the
#                         current interpreter, as the container does)
#   PYTHON=python3        the interpreter that creates it (3.11+)
#   EXTRAS=dev            optional dependency groups of pyproject.toml ("" for none)
#   TORCH_SPEC=...        how to install PyTorch (default: CPU build 2.13.0, or CUDA when a GPU is found)
#   TORCH_INDEX_URL=...   an index for PyTorch, e.g. https://download.pytorch.org/whl/cpu
#   CONSTRAINTS=FILE      pip constraints for every install (`make test-lowest` passes
#                         constraints/lowest.txt: every dependency at its floor)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS-dev}
CONSTRAINTS=${CONSTRAINTS:-}

if [ "$VENV" = none ]; then
  py=$PYTHON
else
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
  fi
  py=$VENV/bin/python
fi

"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "setup: Python 3.11 or newer is needed ($py is older)" >&2; exit 1; }

# Re-run only when the dependency list changed: a stamp keyed on pyproject.toml, extras and
# constraints.
key=$( (cat pyproject.toml; echo "$EXTRAS"; [ -z "$CONSTRAINTS" ] || cat "$CONSTRAINTS") \
  | sha256sum | cut -c1-16)
stamp_dir=$("$py" -c 'import sys; print(sys.prefix)')

# numba caches each compiled function beside its source and checks only that file's
# timestamp, not those of the compiled helpers it calls from other files: after an update
# of model/, cached kernels could run old code. Drop them when model/'s sources change.
# (`|| true`: the container's dependency layer has no model/ sources yet.)
sources=$( (cat model/*.py model/*/*.py 2>/dev/null || true) | sha256sum | cut -c1-16)
if [ ! -f "$stamp_dir/.charrnn-kernels-$sources" ]; then
  find model -path '*/__pycache__/*' \( -name '*.nbi' -o -name '*.nbc' \) -delete 2>/dev/null || true
  rm -f "$stamp_dir"/.charrnn-kernels-*
  touch "$stamp_dir/.charrnn-kernels-$sources"
fi

stamp=$stamp_dir/.charrnn-installed-$key
if [ -f "$stamp" ]; then
  exit 0
fi

pip_install() {
  "$py" -m pip install --disable-pip-version-check -q ${CONSTRAINTS:+-c "$CONSTRAINTS"} "$@"
}

# PyTorch first, so the project's `torch>=2.3` range is already met and pip never pulls the
# multi-GB CUDA wheel onto a CPU-only machine.
if ! "$py" -c 'import torch' 2>/dev/null; then
  if [ -n "${TORCH_SPEC:-}" ]; then
    spec=$TORCH_SPEC
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    spec="torch>=2.3"
  else
    spec="torch==2.13.0"
  fi
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    pip_install --index-url "$TORCH_INDEX_URL" "$spec"
  else
    pip_install "$spec"
  fi
fi

target=.
[ -n "$EXTRAS" ] && target=".[$EXTRAS]"
if [ "$VENV" = none ]; then
  pip_install --no-cache-dir "$target"
else
  pip_install -e "$target"
fi
touch "$stamp"
