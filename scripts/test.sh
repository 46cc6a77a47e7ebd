#!/usr/bin/env bash
# The test suite: every tier this machine supports (creates .venv with Python 3.12 on first use).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m unit` or `-k conversion`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
# the vLLM engine's own environment, for the tests against real vLLM (they skip, saying why, without it);
# not built for a marker selection that leaves them out (`-m fast`, `-m unit`)
marks=""
prev=""
for a in "$@"; do
  [ "$prev" = "-m" ] && marks="$marks $a"
  case "$a" in -m*) [ "$a" != "-m" ] && marks="$marks ${a#-m}" ;; esac
  prev="$a"
done
if [ -z "${TULU_VLLM_PYTHON:-}" ]; then
  if [ -n "$marks" ] && [[ "$marks" != *vllm* ]]; then
    export TULU_VLLM_UNAVAILABLE="not set up for the selection -m$marks"
  else
    source "$(dirname "${BASH_SOURCE[0]}")/vllm-env.sh"
  fi
fi
cd "$ROOT"
exec python -m pytest "$@"
