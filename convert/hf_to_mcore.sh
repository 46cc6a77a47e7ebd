#!/usr/bin/env bash
# HF -> Megatron: a Hugging Face Llama directory to a torch_dist checkpoint, converted at a golden
# experiment's parallel layout (or the one given) by TP x PP ranks, each reading and holding only its
# own slices. The checkpoint loads at any layout: the layout decides how the model's memory is spread
# during the conversion, not what is written.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: convert/hf_to_mcore.sh HF_DIR OUT_DIR [EXPERIMENT] [options]

  HF_DIR      a Hugging Face Llama directory (config.json + safetensors)
  OUT_DIR     the new torch_dist checkpoint (train from it with model.init=OUT_DIR)
  EXPERIMENT  a golden experiment (conf/experiment/<name>.yaml, e.g. tulu3_70b_sft): convert at its
              layout (parallel.tp, pp, vpp, pipeline_layout) with tp x pp ranks
options (passed to tulu-convert hf-to-mcore):
  --tp N --pp N --vpp N --pipeline-layout N,N,...   a layout instead of EXPERIMENT (default: 1 rank)
  --dtype fp32|bf16|fp16   --device cpu|cuda   --overwrite
  --dry-run   print the command, run nothing

environment: PYTHON (default: python); to spread the ranks over several hosts, run the script on each
with the same arguments (OUT_DIR on a file system all of them see) and NNODES=<hosts>
NODE_RANK=<0..NNODES-1> MASTER_ADDR=<host of node rank 0> [MASTER_PORT=29500] (torchrun's static
rendezvous).

examples:
  convert/hf_to_mcore.sh /models/Llama-3.1-8B ckpt/llama3_1_8b tulu3_8b_sft     # 2 ranks (TP2)
  convert/hf_to_mcore.sh /models/Llama-3.1-70B ckpt/llama3_1_70b --tp 8 --dtype bf16
USAGE
}
die() { echo "error: $*" >&2; echo "(convert/hf_to_mcore.sh --help for usage)" >&2; exit 2; }

PYTHON="${PYTHON:-python}"
POS=() OPTS=() TP=1 PP=1 LAYOUT_GIVEN=0 DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY=1 ;;
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;  # --tp=2 -> --tp 2
    --tp|--pp|--vpp|--pipeline-layout|--dtype|--device)
      [ $# -ge 2 ] || die "$1 needs a value"
      case "$1" in --tp) TP="$2" ;; --pp) PP="$2" ;; esac
      case "$1" in --tp|--pp|--vpp|--pipeline-layout) LAYOUT_GIVEN=1 ;; esac
      OPTS+=("$1" "$2"); shift ;;
    -*) OPTS+=("$1") ;;
    *) POS+=("$1") ;;
  esac
  shift
done
[ ${#POS[@]} -ge 2 ] || die "HF_DIR and OUT_DIR are required"
[ ${#POS[@]} -le 3 ] || die "unexpected arguments: ${POS[*]:3}"
HF_DIR="${POS[0]}" OUT_DIR="${POS[1]}" EXPERIMENT="${POS[2]:-}"
[ -f "$HF_DIR/config.json" ] || die "$HF_DIR: no config.json there (not a Hugging Face model directory)"

if [ -n "$EXPERIMENT" ]; then
  [ "$LAYOUT_GIVEN" = 0 ] || die "give EXPERIMENT or --tp/--pp/--vpp/--pipeline-layout, not both"
  # the layout as the project's configs compose it: "tp pp vpp [pipeline layout]"
  layout="$("$PYTHON" - "$EXPERIMENT" <<'PY'
import sys
from tulu_mcore.config.compose import CONF_DIR, compose
name = sys.argv[1]
known = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
if name not in known:
    print(f"error: unknown experiment {name!r}: choose one of {', '.join(known)}", file=sys.stderr)
    sys.exit(2)
p = compose([f"experiment={name}"]).parallel
print(p.tp, p.pp, p.vpp, ",".join(map(str, p.pipeline_layout or [])))
PY
)"
  read -r TP PP VPP PIPELINE_LAYOUT <<<"$layout"
  OPTS+=(--tp "$TP" --pp "$PP" --vpp "$VPP")
  if [ -n "$PIPELINE_LAYOUT" ]; then OPTS+=(--pipeline-layout "$PIPELINE_LAYOUT"); fi
fi
[[ "$TP" =~ ^[1-9][0-9]*$ && "$PP" =~ ^[1-9][0-9]*$ ]] || die "--tp and --pp take positive integers"

RANKS=$((TP * PP))
NNODES="${NNODES:-1}"
CONVERT=(-m tulu_mcore.cli.convert hf-to-mcore "$HF_DIR" "$OUT_DIR" "${OPTS[@]}")
if [ "$RANKS" = 1 ]; then
  CMD=("$PYTHON" "${CONVERT[@]}")
elif [ "$NNODES" = 1 ]; then
  CMD=("$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$RANKS" "${CONVERT[@]}")
else
  [ $((RANKS % NNODES)) = 0 ] || die "NNODES=$NNODES does not divide the $RANKS ranks"
  [ -n "${NODE_RANK:-}" ] && [ -n "${MASTER_ADDR:-}" ] || die "NNODES=$NNODES needs NODE_RANK and MASTER_ADDR"
  CMD=("$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --node-rank "$NODE_RANK"
       --nproc-per-node $((RANKS / NNODES)) --master-addr "$MASTER_ADDR" --master-port "${MASTER_PORT:-29500}"
       "${CONVERT[@]}")
fi
echo "[hf_to_mcore] $RANKS rank(s): ${CMD[*]}" >&2
[ "$DRY" = 0 ] || exit 0
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # ranks share the host's cores
exec "${CMD[@]}"
