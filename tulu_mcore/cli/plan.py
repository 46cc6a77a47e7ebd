"""``tulu-plan``: will a configuration fit, and how fast should it run, before any GPU is allocated.

    tulu-plan model=llama3_1_405b
    tulu-plan experiment=tulu3_405b_sft
    tulu-plan experiment=tulu3_8b_sft parallel.tp=1 parallel.sp=false train.recompute=none
"""

from __future__ import annotations

import sys

from tulu_mcore.cli.overrides import parse
from tulu_mcore.errors import cli_errors

USAGE = """\
usage: tulu-plan [GROUP=OPTION ...] [KEY=VALUE ...]

Takes tulu-train's overrides. Prints the parameters (total and on the most loaded GPU), the layout and
every divisibility check, memory per GPU (weights, gradients, optimizer states under the distributed
optimizer, activations with the chosen recompute, logits, framework reserve), FLOPs per step and the
step time at plan.mfu, and the pipeline bubble. The last two lines:

  params_total=<int>
  fits=true|false peak_gib=<float> gpus=<int>

Exit code 0 when it fits plan.gpu_memory_gib (default 80, an H100), 1 when it does not (with what to
change), 2 for an impossible layout or bad input. GPUs: plan.gpus, default launcher.nodes x
launcher.ranks_per_node (the experiments set the count they are sized for).

With experiment=NAME the plan is of that experiment and your overrides, as tulu-train would run them.
Without one (a bare question such as `tulu-plan model=llama3_1_405b`), what you leave out is filled in,
never what you set: no recipe plans recipe=sft; precision, train.seq_length (and data.max_seq_len),
train.global_batch_size, train.recompute, the layout (parallel.*, as a whole) and plan.gpus come from
the model's experiment for the recipe (else one of the recipe's family, else the model's SFT; RL
recipes also take the engine and, from their own experiment, the samples and passes); a model without
an experiment gets bf16, 4096 tokens, a batch of 128 on the default 8 GPUs, data parallel. An assumed
layout that does not divide your plan.gpus gives way to data parallelism; an assumed batch is rounded
up to whole micro-batches per data-parallel rank. One `assumed:` line per value names it, where it came
from and what to set instead; then `the question in full:`, the command that asks it explicitly.

Examples, with their exit codes:

  tulu-plan model=llama3_1_405b                 # exit 0: experiment=tulu3_405b_sft's layout on 256 GPUs
  tulu-plan model=llama3_2_1b plan.gpus=12      # exit 0: DP12, the batch of 128 rounded up to 132
  tulu-plan experiment=tulu3_405b_sft           # exit 0
  tulu-plan experiment=tulu3_8b_sft parallel.tp=1 parallel.sp=false train.recompute=none   # exit 1: and why
  tulu-plan model=llama3_1_8b parallel.tp=3     # exit 2: TP3 divides neither 8 GPUs nor 32 heads
"""


@cli_errors
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parsed = parse(argv, "tulu-plan", USAGE)
    if parsed is None:
        return
    argv = parsed[0]
    from tulu_mcore.plan import plan_for, question, report

    cfg, assumed = question(argv)  # without experiment=: realistic values for what the question leaves out
    for line in assumed:  # first: an impossible layout's errors follow the values they were found in
        print(line, flush=True)
    plan = plan_for(cfg)
    print(report(plan, cfg))
    if not plan.fits:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
