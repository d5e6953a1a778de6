#!/usr/bin/env bash
# One set-up for every path that runs the project: `make serve`, `make test`, CI and the
# Dockerfile all call this script, so the container installs exactly what was tested.
#
#   VENV=.venv            where the virtual environment lives ("none": install into the
#                         current interpreter)
#   PYTHON=python3        the interpreter that creates it (3.11+)
#   EXTRAS=dev            optional dependency groups of pyproject.toml ("" for none)
#   TORCH_SPEC=...        PyTorch's requirement or a wheel file (default: torch==2.13.0)
#   TORCH_INDEX_URL=...   where PyTorch comes from, e.g. https://download.pytorch.org/whl/cu128
#                         ("": the default index). Unset, the machine decides: with an NVIDIA
#                         GPU (`nvidia-smi -L` works) the default index, whose Linux build is
#                         the CUDA one; without, on Linux, PyTorch's CPU index, or the default
#                         index, saying so, when that cannot be reached within 3 s
#   TORCH_CPU_INDEX_URL=  that CPU index (default https://download.pytorch.org/whl/cpu), e.g.
#                         a mirror of it
#   CONSTRAINTS=FILE      pip constraints for every install (`make test-lowest` passes
#                         constraints/lowest.txt: every dependency at its floor)
#
#   bash scripts/setup.sh --print-torch-plan   prints the PyTorch install it would run
#                         (spec=..., index=..., "" being the default index), installs nothing
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS-dev}
CONSTRAINTS=${CONSTRAINTS:-}
TORCH_CPU_INDEX_URL=${TORCH_CPU_INDEX_URL:-https://download.pytorch.org/whl/cpu}

plan_only=false
if [ $# -gt 0 ]; then
  if [ $# -gt 1 ] || [ "$1" != --print-torch-plan ]; then
    echo "setup: unknown arguments '$*' (the one option is --print-torch-plan)" >&2
    exit 2
  fi
  plan_only=true
fi

# Whether index $2 answers within 3 s, asked with interpreter $1. A thread bounds the whole
# probe, name lookup included (urlopen's timeout covers only the socket): pip itself would
# retry an unreachable index for minutes.
reachable() {
  "$1" -c '
import sys, threading, urllib.request

answered = []

def probe() -> None:
    try:
        with urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=3):
            answered.append(True)
    except Exception:
        pass

thread = threading.Thread(target=probe, daemon=True)
thread.start()
thread.join(3)
sys.exit(0 if answered else 1)
' "$2"
}

# Which PyTorch to install, asking interpreter $1 for the probe: sets torch_spec,
# torch_index ("" = the default index) and torch_note (the one line the set-up prints).
choose_torch() {
  torch_spec=${TORCH_SPEC:-torch==2.13.0}
  torch_index=
  if [ -n "${TORCH_INDEX_URL+set}" ]; then
    torch_index=$TORCH_INDEX_URL
    torch_note="$torch_spec from ${torch_index:-the default index} (TORCH_INDEX_URL)"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    torch_note="$torch_spec, the CUDA build, from the default index (an NVIDIA GPU is here)"
  elif [ "$(uname -s)" != Linux ]; then
    # PyPI's macOS and Windows wheels are the CPU (and MPS) builds already.
    torch_note="$torch_spec from the default index, whose $(uname -s) build has no CUDA"
  elif reachable "$1" "$TORCH_CPU_INDEX_URL"; then
    torch_index=$TORCH_CPU_INDEX_URL
    torch_note="$torch_spec, the CPU build, from $torch_index (no NVIDIA GPU is here)"
  else
    torch_note="$torch_spec from the default index: no NVIDIA GPU is here, but"
    torch_note+=" $TORCH_CPU_INDEX_URL, the CPU build's index, cannot be reached"
  fi
}

if $plan_only; then
  choose_torch "$PYTHON"
  echo "setup: PyTorch: $torch_note" >&2
  printf 'spec=%s\nindex=%s\n' "$torch_spec" "$torch_index"
  exit 0
fi

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
# multi-GB CUDA wheel onto a machine without an NVIDIA GPU.
if ! "$py" -c 'import torch' 2>/dev/null; then
  choose_torch "$py"
  echo "setup: PyTorch: $torch_note" >&2
  pip_install ${torch_index:+--index-url "$torch_index"} "$torch_spec"
fi

target=.
[ -n "$EXTRAS" ] && target=".[$EXTRAS]"
if [ "$VENV" = none ]; then
  pip_install --no-cache-dir "$target"
else
  pip_install -e "$target"
fi
touch "$stamp"
