#!/usr/bin/env bash
# The main job on the built-in tiny default (creates .venv with Python 3.12 on first use).
# Extra arguments go to tulu-demo (see: bash scripts/demo.sh --help).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
exec tulu-demo "$@"
