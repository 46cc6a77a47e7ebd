#!/usr/bin/env bash
# Megatron -> HF, for serving: a torch_dist checkpoint (or a training run's latest one) to a Hugging
# Face directory (config.json, sharded safetensors + index, tokenizer files) that transformers and
# vLLM load. A finished run has written one already (run.dir/hf, train.export_hf); this converts any
# checkpoint, e.g. an intermediate one or a run stopped early.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: convert/mcore_to_hf.sh CKPT_OR_RUN_DIR OUT_DIR [options]

  CKPT_OR_RUN_DIR  a torch_dist checkpoint (tulu-convert hf-to-mcore's, run.dir/checkpoints/step_N),
                   or a run directory: its latest checkpoint (run.dir/checkpoints/latest)
  OUT_DIR          the new Hugging Face directory; serve it with convert/serve_vllm.sh OUT_DIR
options (passed to tulu-convert mcore-to-hf):
  --dtype fp32|bf16|fp16   (default: the checkpoint's; bf16 for serving)
  --max-shard-size 5GB     (default 2GB)   --overwrite

environment: PYTHON (default: python)

example:
  convert/mcore_to_hf.sh runs/tulu3_8b_sft exports/tulu3_8b_sft --dtype bf16
USAGE
}
die() { echo "error: $*" >&2; echo "(convert/mcore_to_hf.sh --help for usage)" >&2; exit 2; }

POS=() OPTS=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dtype|--max-shard-size) [ $# -ge 2 ] || die "$1 needs a value"; OPTS+=("$1" "$2"); shift ;;
    -*) OPTS+=("$1") ;;
    *) POS+=("$1") ;;
  esac
  shift
done
[ ${#POS[@]} = 2 ] || die "CKPT_OR_RUN_DIR and OUT_DIR are required (got ${#POS[@]} arguments)"
[ -d "${POS[0]}" ] || die "${POS[0]}: no such directory"
exec "${PYTHON:-python}" -m tulu_mcore.cli.convert mcore-to-hf "${POS[0]}" "${POS[1]}" "${OPTS[@]}"
