"""``tulu-plan``: will a configuration fit, and how fast should it run, before any GPU is allocated.

    tulu-plan experiment=tulu3_405b_sft
    tulu-plan experiment=tulu3_8b_sft parallel.tp=1 train.recompute=none plan.gpus=8
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
change), 2 for an impossible layout. GPUs: plan.gpus, default launcher.nodes x launcher.ranks_per_node
(the experiments set the count they are sized for).
"""


@cli_errors
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parsed = parse(argv, "tulu-plan", USAGE)
    if parsed is None:
        return
    argv = parsed[0]
    from tulu_mcore.config.compose import compose
    from tulu_mcore.plan import plan_for, report

    cfg = compose(argv)
    plan = plan_for(cfg)
    print(report(plan, cfg))
    if not plan.fits:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
