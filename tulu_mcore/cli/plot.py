"""``tulu-plot``: PNG plots of a run's metrics.

    tulu-plot RUN_DIR [--out DIR]

Reads RUN_DIR/metrics.jsonl (one record per step, written by tulu-train) and writes one PNG per family
of numbers the records hold, one panel per key over the step, into RUN_DIR/plots/ (or --out): loss.png
(SFT: token_mean_loss and the summed loss; DPO/RM/RL: loss; PPO: value loss), reward.png (RL reward_mean;
DPO's implicit rewards; RM scores), accuracy.png (DPO/RM accuracy and margin), verified_rate.png (RL,
overall and per dataset), kl.png, response_length.png, throughput.png (tokens/s, TFLOP/s per GPU, MFU,
step time), lr.png, grad_norm.png. Every run writes the same at its end (metrics.plots=true); this
redraws them at any time, also while the run is going.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tulu_mcore.errors import UserError, cli_errors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tulu-plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a tulu-train run.dir (holding metrics.jsonl)")
    p.add_argument("--out", metavar="DIR", default=None, help="where the PNGs go (default RUN_DIR/plots)")
    return p


@cli_errors
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from tulu_mcore.metrics.plots import write_plots
    from tulu_mcore.metrics.records import METRICS_FILE, read_metrics

    run_dir = Path(args.run_dir)
    records = read_metrics(run_dir)
    if not records:
        raise UserError(f"{run_dir / METRICS_FILE}: no records (not a tulu-train run.dir, or no step done yet)")
    for path in write_plots(run_dir, args.out, records):
        print(path)


if __name__ == "__main__":
    main()
