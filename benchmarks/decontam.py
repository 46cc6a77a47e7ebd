"""tulu-decontam at scale (CPU): a synthetic corpus of training prompts against eval prompts, timed with
its peak memory.

Training prompts: one user turn each, lengths log-normal (median ~90 words, long tail to 2,000: about
the Tülu 3 SFT mixture's prompts); eval prompts: median ~45 words, a tenth passage-long (~300 words);
words drawn from a Zipf vocabulary of 50,000, so that common n-grams recur by chance as in real text.
1 % of the eval prompts are planted in training prompts (whole, or 60 % of them), so the report must
find at least those.

    python benchmarks/decontam.py --train 1000000 --eval 100000 --workdir /tmp/decontam [--workers 2]

Prints (and with --json writes) the corpus sizes, the wall time and the peak RSS of the tulu-decontam
process (its workers included), and the planted matches found.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def corpus(n_train: int, n_eval: int, out: Path, seed: int = 0) -> tuple[Path, Path, int, int]:
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(50_000)])
    ranks = np.arange(1, len(vocab) + 1)
    p = 1.0 / ranks ** 1.1
    p /= p.sum()

    def texts(n, median, long_share, long_median):
        lengths = np.exp(rng.normal(np.log(median), 0.6, n)).astype(int).clip(4, 2000)
        long = rng.random(n) < long_share
        if long.any():
            lengths[long] = np.exp(rng.normal(np.log(long_median), 0.3, long.sum())).astype(int).clip(50, 2000)
        words = vocab[rng.choice(len(vocab), size=int(lengths.sum()), p=p)]
        cuts = np.cumsum(lengths)[:-1]
        return [" ".join(w) for w in np.split(words, cuts)]

    evals = texts(n_eval, 45, 0.1, 300)
    train = texts(n_train, 90, 0.0, 0)
    planted = rng.choice(n_eval, size=n_eval // 100, replace=False)
    where = rng.choice(n_train, size=len(planted), replace=False)
    findable = 0  # plants of 8 tokens or more (a shorter copy holds no 8-gram: it cannot match)
    for e, t in zip(planted, where):
        ev = evals[e].split()
        part = ev if rng.random() < 0.5 else ev[: int(np.ceil(0.6 * len(ev))) + 1]
        train[t] = train[t] + " " + " ".join(part)
        findable += len(part) >= 8
    ev_path, tr_path = out / "eval.jsonl", out / "train.jsonl"
    with open(ev_path, "w") as f:
        for t in evals:
            f.write(json.dumps({"question": t}) + "\n")
    with open(tr_path, "w") as f:
        for t in train:
            f.write(json.dumps({"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": "ok"}]})
                    + "\n")
    return tr_path, ev_path, len(planted), findable


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=1_000_000)
    ap.add_argument("--eval", type=int, default=100_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/decontam-bench"))
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tr, ev, planted, findable = corpus(args.train, args.eval, args.workdir)
    made = time.time() - t0
    t1 = time.time()
    # /usr/bin/time reports the largest resident set of tulu-decontam and its workers; this process's own
    # (the corpus it made) would count in a child it forks directly, up to the child's exec
    proc = subprocess.run(["/usr/bin/time", "-f", "maxrss_kib=%M", sys.executable, "-m", "tulu_mcore.cli.decontam",
                           "--train", str(tr), "--eval", str(ev), "--out", str(args.workdir / "out"),
                           "--workers", str(args.workers)], capture_output=True, text=True)
    wall = time.time() - t1
    if proc.returncode:
        sys.exit(proc.stderr)
    peak_kib = int(proc.stderr.strip().splitlines()[-1].split("=")[1])  # the largest process: main or a worker
    report = json.loads((args.workdir / "out" / "report.json").read_text())
    row = report["rows"][0]
    result = {"train_prompts": args.train, "eval_prompts": args.eval, "train_bytes": tr.stat().st_size,
              "workers": args.workers, "corpus_s": round(made, 1), "wall_s": round(wall, 1),
              "peak_rss_gib": round(peak_kib / 2**20, 2), "planted": planted, "planted_of_8_tokens_or_more": findable,
              "matched_eval_instances": row["matched_eval_instances"],
              "matched_train_rows": row["matched_train_instances"]}
    print(json.dumps(result, indent=2))
    print(proc.stderr.strip())
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
