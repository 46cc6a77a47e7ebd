"""SFT data pipeline benchmark (CPU): template + tokenize + labels, and packing efficiency.

* tokens/s of tulu_mcore's pipeline (render, one batched fast-tokenizer call with offsets, labels from
  offsets) against (a) a plain ``apply_chat_template`` loop with the same template as a Jinja chat
  template (ids only, no labels) and (b) open-instruct's way to the labels (re-tokenizing every
  conversation prefix). The outputs are checked equal.
* packing efficiency (non-padding share) of the per-step best-fit packing, on the demo data and on a
  long-tailed synthetic length mix, with rows padded to the full length (fixed) and trimmed to their
  content (what training uses unless interleaved pipelining is on).

    python benchmarks/sft_data.py [--copies 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from tulu_mcore.data.template import CHAT_TEMPLATE as TULU_JINJA  # the template the exports carry


def prefix_labels(tok, msgs):
    """open-instruct's encode_sft_example, written out: mask non-assistant spans found by
    re-tokenizing conversation prefixes with the chat template."""
    ids = _ids(tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=False))
    labels = list(ids)
    for i, m in enumerate(msgs):
        if m["role"] == "assistant":
            continue
        start = 0 if i == 0 else len(_ids(tok.apply_chat_template(msgs[:i], tokenize=True)))
        gen = i + 1 < len(msgs) and msgs[i + 1]["role"] == "assistant"
        end = len(_ids(tok.apply_chat_template(msgs[: i + 1], tokenize=True, add_generation_prompt=gen)))
        labels[start:end] = [-100] * (end - start)
    return ids, labels


def _ids(x):
    """transformers 5 returns a BatchEncoding, 4 a list."""
    return list(x["input_ids"] if hasattr(x, "keys") else x)


def time_it(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def packing(lengths: np.ndarray, *, global_batch: int, dp: int, capacity: int, multiple: int, steps: int,
            seed: int = 0) -> dict:
    from tulu_mcore.data.packing import pack

    rng = np.random.default_rng(seed)
    out = {}
    for trim in (False, True):
        real = total = rows = 0
        for _ in range(steps):
            batch = rng.choice(len(lengths), size=global_batch, replace=False)
            for r in range(dp):
                ex = [(np.zeros(int(lengths[i]), dtype=np.int64), np.ones(int(lengths[i]), dtype=bool))
                      for i in batch[r::dp]]
                packed = pack(ex, capacity, multiple=multiple, trim=trim)
                real += sum(p.real_tokens for p in packed)
                total += sum(p.tokens.shape[1] for p in packed)
                rows += len(packed)
        out["trimmed" if trim else "fixed"] = {"efficiency": real / total, "rows_per_rank_step": rows / steps / dp}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=20, help="repeat the 480 demo conversations this often")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from tulu_mcore.data.sources import TINY_TOKENIZER, load_conversations, source_specs
    from tulu_mcore.data.template import encode_batch, labels_of
    from tulu_mcore.data.tokenizer import load_tokenizer

    tok = load_tokenizer(TINY_TOKENIZER)
    tok.chat_template = TULU_JINJA
    convs = load_conversations(source_specs("builtin:sft-demo"), on_error="strict", seed=0).conversations * args.copies

    ours, t_ours = time_it(lambda: [e for s in range(0, len(convs), 2048)
                                    for e in encode_batch(convs[s:s + 2048], tok, 4096)])
    plain, t_plain = time_it(lambda: [_ids(tok.apply_chat_template(m, tokenize=True)) for m in convs])
    n_oi = min(len(convs), 2000)  # the prefix method is slow: time a subset
    oi, t_oi = time_it(lambda: [prefix_labels(tok, m) for m in convs[:n_oi]])
    tokens = sum(len(e.input_ids) for e in ours)
    tokens_oi = sum(len(e.input_ids) for e in ours[:n_oi])
    assert all(e.input_ids.tolist() == p for e, p in zip(ours, plain)), "ids differ from apply_chat_template"
    assert all(labels_of(e) == lab and e.input_ids.tolist() == ids for e, (ids, lab) in zip(ours, oi)), \
        "labels differ from prefix re-tokenization"
    res = {
        "conversations": len(convs),
        "tokens": tokens,
        "tulu_mcore_tokens_per_s": tokens / t_ours,
        "apply_chat_template_tokens_per_s": tokens / t_plain,
        "open_instruct_prefix_labels_tokens_per_s": tokens_oi / t_oi,
        "outputs_equal": True,
    }
    demo_lengths = np.array([len(e.input_ids) for e in ours[:480]])
    rng = np.random.default_rng(0)
    long_tail = np.clip(rng.lognormal(mean=np.log(500), sigma=1.0, size=20000), 32, 4096).astype(int)
    res["packing"] = {
        "demo (GBS 32, DP 2, rows of 256)": packing(demo_lengths, global_batch=32, dp=2, capacity=256,
                                                    multiple=1, steps=100),
        "long-tailed (median 500, max 4096; GBS 128, DP 4, rows of 4096)": packing(
            long_tail, global_batch=128, dp=4, capacity=4096, multiple=1, steps=100),
        "long-tailed, CP 2 (documents padded to 4)": packing(
            long_tail, global_batch=128, dp=4, capacity=4096, multiple=4, steps=100),
        "long-tailed, CP 4 + SP TP 8 (documents padded to 8)": packing(
            long_tail, global_batch=128, dp=4, capacity=4096, multiple=8, steps=100),
    }
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
