"""``tulu-decontam``: which training prompts overlap the evaluation sets, with Tülu 3's definition, and
copies of the training data without them.

    tulu-decontam --train sft.jsonl hub/dataset --eval gsm8k_test.jsonl math_test.jsonl --out decontam/
    tulu-decontam --train sft.jsonl --eval preset:tulu3 --out decontam/

Training instances are user turns (a row's ``messages``, or ``chosen``, or its ``prompt``); an eval
instance is a row's ``prompt``, ``question`` or ``problem`` field, else its user turns; or the fields an
eval source names (``SRC,fields=passage+question``: each field scored apart, the mean taken, a row with
a null field left out; open-instruct's way). Eval sources: ``SRC[,subset=S][,split=S][,fields=a+b]
[,limit=N]`` (a file, or a dataset in the local Hugging Face cache), or ``preset:tulu3`` (the 20 sets
open-instruct checked Tülu 3 against, with their splits and fields; ``preset:tulu3_dev``,
``preset:tulu3_unseen``). Tokens: NFKC,
lower case, words (``\\w+`` runs joined across an inner apostrophe or dot; punctuation dropped). An eval
instance matches a training instance when more than --threshold (0.5) of its tokens lie inside its
--ngram-token n-grams (8) that also occur in that one training instance; a training source is
contaminated for an eval set when more than --dataset-threshold (0.02) of the set's instances match.
Eval instances shorter than the n-gram can never match (counted as not scorable).

Writes DIR/report.json (one row per training source x eval set: eval_instances, matched_eval_instances,
matched_fraction, contaminated, the share of training rows that match, and those rows by file:line or
index), DIR/report.md, and a copy of each training source, named after it, without the rows that match
any eval set. Sources: .jsonl / .json / .parquet files, or datasets in the local Hugging Face cache.
"""

from __future__ import annotations

import argparse
import os
import sys

from tulu_mcore.errors import cli_errors


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return v


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tulu-decontam", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", nargs="+", required=True, metavar="SRC", help="training data sources")
    p.add_argument("--eval", nargs="+", required=True, metavar="SRC",
                   help="evaluation sets: SRC[,subset=S][,split=S][,fields=a+b][,limit=N] or preset:tulu3")
    p.add_argument("--out", required=True, metavar="DIR", help="where the report and the filtered copies go")
    p.add_argument("--ngram", type=_positive, default=8, help="n-gram length in tokens (default 8, Tülu 3)")
    p.add_argument("--threshold", type=_fraction, default=0.5,
                   help="an eval instance matches above this share of covered tokens (default 0.5)")
    p.add_argument("--dataset-threshold", type=_fraction, default=0.02,
                   help="a training source is contaminated above this share of matched eval instances "
                   "(default 0.02)")
    p.add_argument("--workers", type=_positive, default=os.cpu_count() or 1,
                   help="processes scanning the training data (default: the cores)")
    return p


@cli_errors
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from tulu_mcore.data.decontam import decontaminate

    report = decontaminate(args.train, args.eval, args.out, n=args.ngram, threshold=args.threshold,
                           dataset_threshold=args.dataset_threshold, workers=args.workers,
                           log=lambda m: print(m, file=sys.stderr, flush=True))
    for r in report.rows:
        flag = "CONTAMINATED" if r["contaminated"] else "clean"
        print(f"{r['train']} vs {r['eval']}: {r['matched_eval_instances']:,} of {r['eval_instances']:,} eval "
              f"instances matched ({100 * r['matched_fraction']:.2f}%): {flag}; "
              f"{r['matched_train_instances']:,} training rows matched")
    for t, f in report.filtered.items():
        print(f"{t}: {f['removed']:,} of {f['rows']:,} rows removed -> {f['path']}")
    print(f"report: {os.path.join(args.out, 'report.md')}")


if __name__ == "__main__":
    main()
