#!/usr/bin/env bash
# Sourced by the other scripts: makes sure .venv exists (Python 3.12) with tulu_mcore installed in
# editable mode plus its test extras, reinstalling only when pyproject.toml changed.
#   TULU_PYTHON=/path/to/python3.12   use this interpreter to create the environment
#   TULU_VENV=/path/to/venv           use (or create) the environment there instead of .venv
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TULU_VENV:-$ROOT/.venv}"

is_py312() { [ -x "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; }

find_python() {
  local c
  for c in "${TULU_PYTHON:-}" "$(command -v python3.12 || true)" \
           "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.12*/bin/python3.12 \
           /usr/bin/python3.12 /usr/local/bin/python3.12 "$(command -v python3 || true)"; do
    if [ -n "$c" ] && is_py312 "$c"; then echo "$c"; return 0; fi
  done
  if command -v uv >/dev/null 2>&1; then uv python find 3.12 2>/dev/null && return 0; fi
  return 1
}

if ! is_py312 "$VENV/bin/python"; then
  PY="$(find_python)" || {
    echo "error: Python 3.12 not found (megatron-core 0.19 ships cp312 wheels only)." >&2
    echo "       install it (e.g. 'pyenv install 3.12') or set TULU_PYTHON=/path/to/python3.12" >&2
    exit 2
  }
  echo "[setup] creating $VENV with $PY" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
fi

STAMP="$VENV/.tulu-installed"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing tulu_mcore and its dependencies into $VENV (first time: several minutes, ~4 GB)" >&2
  LOG="$VENV/pip-install.log"
  if ! { "$VENV/bin/python" -m pip install --upgrade pip && "$VENV/bin/python" -m pip install -e "$ROOT[test]"; } \
      >"$LOG" 2>&1; then
    tail -n 40 "$LOG" >&2
    echo "error: installing into $VENV failed (full log: $LOG)" >&2
    exit 1
  fi
  "$VENV/bin/python" -W ignore -c 'import tulu_mcore, megatron.core, torch, transformers' || {
    echo "error: $VENV cannot import the installed packages (log: $LOG)" >&2; exit 1; }
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
