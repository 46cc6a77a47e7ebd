"""``tulu-data inspect``: exactly what a model will learn from each conversation.

    tulu-data inspect --tokenizer TOKENIZER_DIR --data FILE [--pairs | --prompts] [--limit N] [--max-seq-len N]

One JSON object per example: ``text`` (the rendered Tülu template), ``input_ids`` and ``labels`` (the
input id where the token is trained, -100 elsewhere), plus its origin and whether it was truncated.
With ``--pairs`` (preference data for DPO / reward models): one object per pair with ``chosen`` and
``rejected``, each holding those fields. With ``--prompts`` (RLVR data): one object per prompt with
``text`` (the rendered prompt, generation prompt included), ``input_ids``, ``dataset`` and
``ground_truth``. Bad rows skipped (``--on-error skip``) are counted on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

from tulu_mcore.errors import UserError, cli_errors


def _count(least: int):
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = least - 1
        if n < least:
            raise argparse.ArgumentTypeError(f"expected a whole number of at least {least}, got {text!r}")
        return n

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tulu-data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ins = sub.add_parser("inspect", help="print the rendered text, input ids and labels of examples",
                         description="Print one JSON object per example: text, input_ids, labels "
                         "(the input id where trained, -100 elsewhere), origin, truncated.")
    ins.add_argument("--tokenizer", required=True, help="tokenizer directory or hub name (local cache)")
    ins.add_argument("--data", required=True,
                     help="a .jsonl/.json/.parquet file, a hub dataset, builtin:sft-demo, "
                     "builtin:preference-demo or builtin:rlvr-demo")
    kind = ins.add_mutually_exclusive_group()
    kind.add_argument("--pairs", action="store_true",
                      help="the data are preference pairs (chosen / rejected), as recipe=dpo and rm read them")
    kind.add_argument("--prompts", action="store_true",
                      help="the data are RLVR prompts (messages, ground_truth, dataset), as recipe=rlvr_grpo "
                      "and rlvr_ppo read them")
    ins.add_argument("--limit", type=_count(0), default=None, help="print at most N examples")
    ins.add_argument("--max-seq-len", type=_count(1), default=4096, help="truncation limit (default 4096)")
    ins.add_argument("--on-error", choices=("strict", "skip"), default="strict",
                     help="bad examples: stop with file:line (strict, default) or skip them")
    ins.add_argument("--unverifiable", choices=("keep", "bad"), default="keep",
                     help="--prompts whose ground truth no verifier can use: kept and marked (keep, default, as "
                     "data.unverifiable) or bad examples")
    return p


@cli_errors
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from tulu_mcore.data.sources import load_conversations, source_specs
    from tulu_mcore.data.template import encode_batch, labels_of
    from tulu_mcore.data.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    try:
        if args.prompts:
            return _inspect_prompts(args, tok)
        if args.pairs:
            from tulu_mcore.data.preference import load_pairs

            loaded = load_pairs(source_specs(args.data), on_error=args.on_error, seed=0)
            convs = [c for pair in loaded.pairs[: args.limit] for c in pair]
        else:
            loaded = load_conversations(source_specs(args.data), on_error=args.on_error, seed=0)
            convs = loaded.conversations[: args.limit] if args.limit is not None else loaded.conversations
    except UserError as e:  # the loaders speak of the config key; here it is an option
        message = str(e).replace("set data.on_error=skip", "add --on-error skip")
        looks_other = ("no usable", "no assistant message", "no 'messages' field")
        if not (args.pairs or args.prompts) and any(m in message for m in looks_other):
            message += " (preference pairs or RLVR prompts? add --pairs or --prompts)"
        raise UserError(message) from None
    group = 2 if args.pairs else 1
    origins = loaded.origins[: len(convs) // group]
    encoded = [{"text": e.text, "input_ids": e.input_ids.tolist(), "labels": labels_of(e), "truncated": e.truncated}
               for e in encode_batch(convs, tok, args.max_seq_len)]
    records = ({"origin": origin, "chosen": encoded[2 * i], "rejected": encoded[2 * i + 1]} if args.pairs
               else {"origin": origin, **encoded[i]} for i, origin in enumerate(origins))
    _emit(records, loaded.skipped)


def _inspect_prompts(args, tok) -> None:
    from tulu_mcore.data.rlvr import encode_prompts, load_prompts, prompt_text
    from tulu_mcore.data.sources import source_specs

    loaded = load_prompts(source_specs(args.data), on_error=args.on_error, seed=0, unverifiable=args.unverifiable)
    prompts = loaded.prompts[: args.limit] if args.limit is not None else loaded.prompts
    ids = encode_prompts(prompts, tok)
    records = ({"origin": origin, "dataset": p.dataset, "ground_truth": p.ground_truth, "text": prompt_text(p.messages, tok.eos_token),
                "input_ids": x.tolist(), "prompt_tokens": len(x), **({"unverifiable": p.problem} if p.problem else {})}
               for origin, p, x in zip(loaded.origins, prompts, ids))
    _emit(records, loaded.skipped)
    if loaded.warning():
        print(loaded.warning(), file=sys.stderr)


def _emit(records, skipped) -> None:
    """One JSON line per record on stdout; the bad rows skipped, by reason, on stderr."""
    try:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
    except BrokenPipeError:  # `| head` closed the pipe: not an error
        sys.stderr.close()
    if skipped:
        print(f"skipped: {dict(skipped)}", file=sys.stderr)


if __name__ == "__main__":
    main()
