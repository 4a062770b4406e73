#!/usr/bin/env bash
# Run a command inside the project's virtual environment, creating and installing it first.
#
#   bash scripts/in_venv.sh robodistill pipeline     # the main job
#   bash scripts/in_venv.sh pytest                   # the test suite
#
# Idempotent: a second call reinstalls only when pyproject.toml changed.
# torch is installed as torch==2.13.0 (a CPU build) before anything else asks for it,
# because an unpinned `torch` resolves to a multi-gigabyte CUDA build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ROBODISTILL_VENV:-$root/.venv}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

if [ ! -x "$venv/bin/python" ]; then
    echo "[in_venv] creating $venv with $("$python" --version)" >&2
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
# This machine's pip config lists local mirrors that pip reports as missing on every lookup.
quiet() { "$@" 2> >(grep -v "^WARNING: Location 'file://" >&2); }
if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
    echo "[in_venv] installing torch==2.13.0 (CPU)" >&2
    quiet "${pip[@]}" install "torch==2.13.0"
fi
stamp="$venv/.robodistill-installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
    echo "[in_venv] installing robodistill[dev] (editable)" >&2
    quiet "${pip[@]}" install -e "$root[dev]"
    touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
cd "$root"
exec "$@"
