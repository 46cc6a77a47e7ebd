"""DPO step time with the reference log-prob cache vs a live reference model.

A live reference adds one forward pass per step (2N FLOPs per token beside training's 6N), so the
cache should take about 6/8 = 0.75 of the live step time once compute dominates. Each configuration
runs `tulu-train recipe=dpo` on the built-in preference pairs for `--steps` steps (the cache is built
first, outside the timed steps) and reports the median step time of the steps after the first.

    python benchmarks/dpo_reference.py --ranks 2 --steps 12                       # tiny model, CPU
    python benchmarks/dpo_reference.py --width 512 --ranks 2 --steps 8             # a wider model, CPU
    python benchmarks/dpo_reference.py --model llama3_2_1b --init DIR --device cuda --ranks 1   # a GPU
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path


def run(mode: str, args, root: Path, i: int) -> dict:
    from tulu_mcore.metrics.logger import read_metrics
    from tulu_mcore.runtime.launch import torchrun

    run_dir = root / f"{mode}{i}"  # a fresh run each time (the same run.dir would resume)
    overrides = ["recipe=dpo", f"model={args.model}", f"run.dir={run_dir}", f"data.cache_dir={root / 'data'}",
                 f"runtime.device={args.device}", f"train.max_steps={args.steps}", "train.export_hf=false",
                 "metrics.progress=false", f"dpo.reference={mode}", f"precision={args.precision}"]
    if args.init:
        overrides.append(f"model.init={args.init}")
    if args.tokenizer:
        from tulu_mcore.data.sources import TINY_TOKENIZER

        overrides.append(f"model.tokenizer={TINY_TOKENIZER if args.tokenizer == 'tiny' else args.tokenizer}")
    if args.width:
        w = args.width
        overrides += [f"model.arch.hidden_size={w}", f"model.arch.intermediate_size={int(w * 2.6875)}",
                      f"model.arch.num_attention_heads={w // 32}", f"model.arch.num_key_value_heads={w // 128}",
                      "model.arch.head_dim=32"]
    t0 = time.time()
    proc = torchrun("tulu_mcore.cli.train", overrides, nproc=args.ranks, capture=True)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    wall = time.time() - t0
    steps = read_metrics(run_dir)
    built = re.search(r"reference log-probs of [\d,]+ pairs in ([\d.]+)s", proc.stdout)
    times = [m["step_time_s"] for m in steps[1:]]
    return {"mode": mode, "median_step_s": statistics.median(times), "mean_step_s": statistics.fmean(times),
            "tokens_per_s": statistics.median(m["tokens_per_s"] for m in steps[1:]), "wall_s": wall,
            "reference_pass_s": float(built.group(1)) if built else None, "losses": [round(m["loss"], 6) for m in steps]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--init", default=None, help="model.init (default: random weights)")
    p.add_argument("--width", type=int, default=None, help="override the hidden size (multiple of 128)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--repeat", type=int, default=1, help="alternate cache/live runs this many times")
    p.add_argument("--tokenizer", default=None, help="model.tokenizer (tiny: the built-in one, for random weights)")
    p.add_argument("--json", default=None, help="also write the summary here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        results = {"cache": [], "live": []}
        for i in range(args.repeat):
            for mode in ("cache", "live"):
                results[mode].append(run(mode, args, root, i))
    cache = statistics.median(r["median_step_s"] for r in results["cache"])
    live = statistics.median(r["median_step_s"] for r in results["live"])
    same = results["cache"][0]["losses"] == results["live"][0]["losses"]
    summary = {"args": vars(args), "cache_step_s": cache, "live_step_s": live, "ratio": cache / live,
               "identical_losses": same, "runs": results}
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
