#!/usr/bin/env bash
# The test suite: every tier this machine supports (creates .venv with Python 3.12 on first use).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m unit` or `-k conversion`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
# the vLLM engine's own environment, for the tests against real vLLM (they skip, saying why, without it)
[ -n "${TULU_VLLM_PYTHON:-}" ] || source "$(dirname "${BASH_SOURCE[0]}")/vllm-env.sh"
cd "$ROOT"
exec python -m pytest "$@"
