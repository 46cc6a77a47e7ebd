#!/usr/bin/env bash
# Serve a Hugging Face export (convert/mcore_to_hf.sh, or a run's run.dir/hf) with vLLM's
# OpenAI-compatible server: /v1/completions, /v1/chat/completions (the tokenizer's chat template),
# /v1/models. vLLM runs in its own environment: $TULU_VLLM_PYTHON (scripts/vllm-env.sh sets it for
# the CPU build) or the `vllm` command on PATH.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: convert/serve_vllm.sh HF_DIR [vllm serve options]

  HF_DIR   a Hugging Face directory with its tokenizer files (convert/mcore_to_hf.sh writes them)
  options  anything `vllm serve` takes, e.g. --port 8000 --tensor-parallel-size 8 --max-model-len 8192
           --served-model-name tulu3-8b --dtype bfloat16

environment: TULU_VLLM_PYTHON (the vLLM environment's interpreter; default: `vllm` on PATH),
             PYTHON (the project's interpreter; default: python)

example:
  convert/serve_vllm.sh exports/tulu3_8b_sft --port 8000 --served-model-name tulu3-8b
  curl localhost:8000/v1/completions -H 'Content-Type: application/json' \
      -d '{"model": "tulu3-8b", "prompt": "2 + 2 =", "max_tokens": 8, "temperature": 0}'
USAGE
}
die() { echo "error: $*" >&2; echo "(convert/serve_vllm.sh --help for usage)" >&2; exit 2; }

case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  ""|-*) die "HF_DIR is required (first argument)" ;;
esac
HF_DIR="$1"; shift
[ -f "$HF_DIR/config.json" ] || die "$HF_DIR: no config.json there (not a Hugging Face model directory)"
if ! ls "$HF_DIR"/tokenizer*.json >/dev/null 2>&1 && [[ " $* " != *" --tokenizer"* ]]; then
  die "$HF_DIR: no tokenizer files (pass --tokenizer DIR, or export a checkpoint that carries them)"
fi

# the server command and its environment (vLLM's interpreter, CPU-build settings) come from the one
# place tulu-eval's vllm backend takes them too: tulu_mcore.evaluation.serve
exec "${PYTHON:-python}" -m tulu_mcore.evaluation.serve "$HF_DIR" "$@"
