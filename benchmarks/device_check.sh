#!/usr/bin/env bash
# The GPU performance check: one script, one H100/H200, under 8 minutes. Every stage appends JSON lines
# to OUT/results.jsonl as soon as it has measured (a stage that fails or runs out of its time limit is
# recorded as such and the next one starts); OUT/report.md is written from them at the end.
#
#   bash benchmarks/device_check.sh OUT                # on the GPU machine, in the project root
#   DRY_RUN=1 bash benchmarks/device_check.sh OUT      # the same stages on the CPU, tiny shapes (~5 min)
#
# Stages, most important first: environment; the GPU test tier (tests/gpu: no host syncs in the packed
# forward/backward, varlen vs the document loop, compiled kernels vs eager); bf16/fp32 parity vs
# transformers (tiny + 1B); SFT step tokens/s, TFLOP/s and MFU vs transformers + fused AdamW on the same
# packed rows (1B; an 8B slice of 4 layers at 4096 and 8192); with Transformer Engine: TE-spec parity,
# TE bf16 and FP8 (delayed, tensorwise) with their loss curves; each speed-up switched off in turn (1B);
# each element-wise kernel eager vs compiled/fused; packed attention timing; the DPO step with the reference cache vs a live reference; megatron-engine
# generation. Transformer Engine is installed first when staged by benchmarks/device/stage_te.sh (.te/).
# The whole run keeps to BUDGET_S (default 470 s): a stage gets at most what is left, and stages that
# would start with under 15 s left are recorded as skipped. TULU_COMMIT names the commit in the report.
set -uo pipefail
out=${1:?usage: device_check.sh OUT}
mkdir -p "$out"
out=$(cd "$out" && pwd)
jsonl=$out/results.jsonl
log=$out/log.txt
: > "$jsonl"
here=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH=$(dirname "$here"):$here${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

if [ -n "${DRY_RUN:-}" ]; then  # tiny shapes on the CPU: every stage's plumbing, none of its numbers
  dev=(--device cpu); one_b=tiny; eight_b=tiny; prec=fp32; steps=(--steps 2 --warmup 1); s1=256; s2=512
  layers=2
else
  dev=(--device cuda); one_b=llama3_2_1b; eight_b=llama3_1_8b; prec=bf16; steps=(--steps 6 --warmup 2)
  s1=4096; s2=8192; layers=4
fi

budget=${BUDGET_S:-470}
stage() {  # stage NAME SECONDS CMD...: runs CMD with a time limit, records how it ended
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS left=$((budget - SECONDS))
  if [ $left -lt 15 ]; then
    echo "{\"what\": \"stage\", \"name\": \"$name\", \"rc\": \"skipped (budget)\", \"seconds\": 0}" >> "$jsonl"
    echo "== $name skipped: ${left}s of the budget left" | tee -a "$log"; return
  fi
  [ $limit -gt $left ] && limit=$left
  echo "== $name (limit ${limit}s): $*" | tee -a "$log"
  timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  echo "{\"what\": \"stage\", \"name\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}" >> "$jsonl"
  echo "   rc=$rc in $((SECONDS - t0))s" | tee -a "$log"
}

if [ -z "${DRY_RUN:-}" ] && [ -f .te/0/CORE_NAME ] && ! $py -c "import transformer_engine.pytorch" 2>/dev/null; then
  stage te_install 120 bash "$here/device/install_te.sh"
  export PYTHONPATH=$PYTHONPATH:${TE_SITE:-/tmp/te-site}
fi
have_te=$($py -c "import transformer_engine.pytorch; print(1)" 2>/dev/null || echo 0)
[ -n "${DRY_RUN:-}" ] && have_te=0

stage env 60 $py "$here/device_check.py" env "${dev[@]}" --jsonl "$jsonl"
# the GPU test tier: the fast path reads nothing back to the host and matches the CPU's document loop
stage gpu_tests 150 $py -m pytest -q -p no:cacheprovider "$(dirname "$here")/tests/gpu"
stage parity 150 $py "$here/gpu_foundation.py" --parity-only "${dev[@]}" --workdir "$out/parity" --jsonl "$jsonl"

sft=($py "$here/gpu_sft.py" "${dev[@]}" --precision $prec "${steps[@]}" --jsonl "$jsonl")
stage sft_1b 150 "${sft[@]}" --model $one_b --seq $s1 --sync-debug --label ours
stage sft_8b_slice_$s1 150 "${sft[@]}" --model $eight_b --layers $layers --seq $s1 --batch 24 --label ours
stage sft_8b_slice_$s2 180 "${sft[@]}" --model $eight_b --layers $layers --seq $s2 --batch 48 --label ours
if [ "$have_te" = 1 ]; then
  stage te_parity 120 $py -m tulu_mcore.cli.convert verify "$out/parity/1b-hf" "$out/parity/1b-mcore" --device cuda \
    --dtype bf16 --seq-len 256 --attention te
  stage te_bf16 150 "${sft[@]}" --model $eight_b --layers $layers --seq $s1 --batch 24 --attention te \
    --skip-transformers --label "TE bf16"
  for recipe in delayed tensorwise; do
    stage te_fp8_$recipe 150 "${sft[@]}" --model $eight_b --layers $layers --seq $s1 --batch 24 --attention te \
      --fp8 hybrid --fp8-recipe $recipe --skip-transformers --label "TE FP8 $recipe"
  done
fi
# each change switched off in turn (ours alone: the transformers baseline ran above)
stage sft_1b_per_document 90 "${sft[@]}" --model $one_b --seq $s1 --skip-transformers --per-document \
  --label "per-document attention"
stage sft_1b_eager 90 "${sft[@]}" --model $one_b --seq $s1 --skip-transformers --kernels eager --label "eager kernels"
stage sft_1b_foreach 90 "${sft[@]}" --model $one_b --seq $s1 --skip-transformers --optim-impl foreach \
  --label "foreach AdamW"
stage kernels 90 $py "$here/kernel_fusions.py" "${dev[@]}" --jsonl "$jsonl" \
  $([ -n "${DRY_RUN:-}" ] && echo "--tokens 256 --vocab 4096 --repeat 2")
stage packed 90 $py "$here/device_check.py" packed "${dev[@]}" --model $one_b --precision $prec --seq $s1 --jsonl "$jsonl"
stage dpo 150 $py "$here/dpo_reference.py" --model $one_b "${dev[@]}" --precision $prec --ranks 1 --steps 6 \
  --tokenizer tiny --json "$out/dpo.json"
[ -f "$out/dpo.json" ] && $py -c "import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps({'what': 'dpo', **d}))" \
  "$out/dpo.json" >> "$jsonl"
stage engine 90 $py "$here/device_check.py" engine "${dev[@]}" --model $one_b --precision $prec --jsonl "$jsonl" \
  $([ -n "${DRY_RUN:-}" ] && echo "--prompts 2 --n 2 --prompt-len 16 --new-tokens 8")
$py "$here/device_report.py" "$jsonl" > "$out/report.md"
echo "report: $out/report.md"
