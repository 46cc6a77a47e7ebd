"""``tulu-data inspect``: exactly what a model will learn from each conversation.

    tulu-data inspect --tokenizer TOKENIZER_DIR --data FILE [--pairs] [--limit N] [--max-seq-len N]

One JSON object per example: ``text`` (the rendered Tülu template), ``input_ids`` and ``labels`` (the
input id where the token is trained, -100 elsewhere), plus its origin and whether it was truncated.
With ``--pairs`` (preference data for DPO / reward models): one object per pair with ``chosen`` and
``rejected``, each holding those fields.
"""

from __future__ import annotations

import argparse
import json
import sys

from tulu_mcore.errors import cli_errors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tulu-data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ins = sub.add_parser("inspect", help="print the rendered text, input ids and labels of examples",
                         description="Print one JSON object per example: text, input_ids, labels "
                         "(the input id where trained, -100 elsewhere), origin, truncated.")
    ins.add_argument("--tokenizer", required=True, help="tokenizer directory or hub name (local cache)")
    ins.add_argument("--data", required=True,
                     help="a .jsonl/.json/.parquet file, a hub dataset, builtin:sft-demo or "
                     "builtin:preference-demo")
    ins.add_argument("--pairs", action="store_true",
                     help="the data are preference pairs (chosen / rejected), as recipe=dpo and rm read them")
    ins.add_argument("--limit", type=int, default=None, help="print at most N examples")
    ins.add_argument("--max-seq-len", type=int, default=4096, help="truncation limit (default 4096)")
    ins.add_argument("--on-error", choices=("strict", "skip"), default="strict",
                     help="bad examples: stop with file:line (strict, default) or skip them")
    return p


@cli_errors
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from tulu_mcore.data.sources import load_conversations, source_specs
    from tulu_mcore.data.template import encode_batch, labels_of
    from tulu_mcore.data.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    if args.pairs:
        from tulu_mcore.data.preference import load_pairs

        loaded = load_pairs(source_specs(args.data), on_error=args.on_error, seed=0)
        convs = [c for pair in loaded.pairs[: args.limit] for c in pair]
    else:
        loaded = load_conversations(source_specs(args.data), on_error=args.on_error, seed=0)
        convs = loaded.conversations[: args.limit] if args.limit is not None else loaded.conversations
    group = 2 if args.pairs else 1
    origins = loaded.origins[: len(convs) // group]
    encoded = [{"text": e.text, "input_ids": e.input_ids.tolist(), "labels": labels_of(e), "truncated": e.truncated}
               for e in encode_batch(convs, tok, args.max_seq_len)]
    try:
        for i, origin in enumerate(origins):
            if args.pairs:
                record = {"origin": origin, "chosen": encoded[2 * i], "rejected": encoded[2 * i + 1]}
            else:
                record = {"origin": origin, **encoded[i]}
            print(json.dumps(record, ensure_ascii=False))
    except BrokenPipeError:  # `| head` closed the pipe: not an error
        sys.stderr.close()
    if loaded.skipped:
        print(f"skipped: {dict(loaded.skipped)}", file=sys.stderr)


if __name__ == "__main__":
    main()
