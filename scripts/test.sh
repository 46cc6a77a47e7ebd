#!/usr/bin/env bash
# The test suite: every tier this machine supports (creates .venv with Python 3.12 on first use).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m unit` or `-k conversion`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
exec python -m pytest "$@"
