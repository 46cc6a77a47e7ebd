"""``tulu-data inspect``: exactly what a model will learn from each conversation.

    tulu-data inspect --tokenizer TOKENIZER_DIR --data FILE [--limit N] [--max-seq-len N]

One JSON object per example: ``text`` (the rendered Tülu template), ``input_ids`` and ``labels`` (the
input id where the token is trained, -100 elsewhere), plus its origin and whether it was truncated.
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
                     help="a .jsonl/.json/.parquet file, a hub dataset, or builtin:sft-demo")
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
    loaded = load_conversations(source_specs(args.data), on_error=args.on_error, seed=0)
    convs = loaded.conversations[: args.limit] if args.limit is not None else loaded.conversations
    origins = loaded.origins[: len(convs)]
    try:
        for origin, enc in zip(origins, encode_batch(convs, tok, args.max_seq_len)):
            print(json.dumps({"origin": origin, "text": enc.text, "input_ids": enc.input_ids.tolist(),
                              "labels": labels_of(enc), "truncated": enc.truncated}, ensure_ascii=False))
    except BrokenPipeError:  # `| head` closed the pipe: not an error
        sys.stderr.close()
    if loaded.skipped:
        print(f"skipped: {dict(loaded.skipped)}", file=sys.stderr)


if __name__ == "__main__":
    main()
