"""Tokenized SFT data on disk, keyed by everything that determines it.

A dataset is three flat arrays (token ids, trained-token flags, example offsets) plus ``meta.json``;
preference data (``kind="pairs"``) stores each pair as two consecutive examples, chosen then rejected.
It is
written once (by rank 0, into a temporary directory renamed into place) and memory-mapped by every
rank. The key hashes the sources (file size and mtime, or the hub dataset's fingerprint), the tokenizer
files, the template version, the length limit and the filtering options: change any and the data is
rebuilt; change nothing and a rerun starts training at once.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tulu_mcore.data.sources import SourceSpec, load_conversations, source_fingerprint
from tulu_mcore.data.template import TEMPLATE_NAME, TEMPLATE_VERSION, encode_batch
from tulu_mcore.data.tokenizer import tokenizer_fingerprint
from tulu_mcore.errors import UserError

CACHE_FORMAT = 1
ENCODE_CHUNK = 2048  # conversations per tokenizer call (the fast tokenizer parallelises within it)


@dataclass
class TokenizedData:
    path: Path
    tokens: np.ndarray  # int32, all examples concatenated
    trained: np.ndarray  # uint8, 1 where the token is a training target
    offsets: np.ndarray  # int64 [n + 1]
    meta: dict

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def group_size(self) -> int:
        """Sequences per unit: 1 for SFT conversations, 2 for preference pairs."""
        return 2 if self.meta.get("kind") == "pairs" else 1

    @property
    def units(self) -> int:
        return len(self) // self.group_size

    def unit(self, i: int) -> list[tuple[np.ndarray, np.ndarray]]:
        g = self.group_size
        return [self.example(g * i + j) for j in range(g)]

    @property
    def key(self) -> str:
        return self.meta["key"]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.tokens[a:b], self.trained[a:b].astype(bool)


def fingerprint(ident: dict) -> str:
    """A short stable hash of a JSON-able description (what a cache or a run was built from)."""
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def cache_key(specs: list[SourceSpec], tokenizer, *, max_seq_len: int, truncate: bool, on_error: str,
              seed: int, kind: str = "sft") -> str:
    ident = {
        "format": CACHE_FORMAT,
        "kind": kind,
        "template": [TEMPLATE_NAME, TEMPLATE_VERSION],
        "sources": [source_fingerprint(s) for s in specs],
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_seq_len": max_seq_len,
        "truncate": truncate,
        "on_error": on_error,
        "seed": seed,  # caps subsample with it
    }
    return fingerprint(ident)


def _groups(specs, on_error: str, seed: int, kind: str):
    """(conversation groups, origins, skipped, examples seen): one conversation per SFT example, the
    chosen and rejected conversations per preference pair."""
    if kind == "pairs":
        from tulu_mcore.data.preference import load_pairs

        lp = load_pairs(specs, on_error=on_error, seed=seed)
        return [list(p) for p in lp.pairs], lp.origins, lp.skipped, lp.examples_seen
    lc = load_conversations(specs, on_error=on_error, seed=seed)
    return [[c] for c in lc.conversations], lc.origins, lc.skipped, lc.examples_seen


def build(specs: list[SourceSpec], tokenizer, out: Path, *, key: str, max_seq_len: int, truncate: bool,
          on_error: str, seed: int, kind: str = "sft", log=print) -> None:
    t0 = time.time()
    groups, origins, skipped_before, seen = _groups(specs, on_error, seed, kind)
    skipped = Counter(skipped_before)
    tokens, trained, lengths = [], [], []
    truncated = kept = 0
    per = 2 if kind == "pairs" else 1
    for start in range(0, len(groups), ENCODE_CHUNK):
        chunk = groups[start:start + ENCODE_CHUNK]
        encoded = encode_batch([c for g in chunk for c in g], tokenizer, max_seq_len)
        for j in range(len(chunk)):
            encs, origin = encoded[per * j:per * j + per], origins[start + j]
            if any(e.truncated for e in encs) and not truncate:
                msg = f"{origin}: longer than data.max_seq_len={max_seq_len} tokens"
                if on_error == "strict":
                    raise UserError(f"{msg} (set data.truncate=true to cut it, or data.on_error=skip)")
                skipped["longer than max_seq_len"] += 1
                continue
            if not all(e.trained[1:].any() for e in encs):  # the first token is never a target
                skipped["no trained token left after truncation"] += 1
                continue
            if per == 2 and np.array_equal(encs[0].input_ids, encs[1].input_ids):
                skipped["identical after truncation"] += 1
                continue
            truncated += any(e.truncated for e in encs)  # kept, but cut at max_seq_len
            kept += 1
            for e in encs:
                tokens.append(e.input_ids)
                trained.append(e.trained)
                lengths.append(len(e.input_ids))
    if not lengths:
        raise UserError(f"no usable example in {[s.path for s in specs]} (skipped: {dict(skipped)})")
    tmp = out.with_name(out.name + f".partial-{int(time.time() * 1e6)}")
    tmp.mkdir(parents=True)
    np.save(tmp / "tokens.npy", np.concatenate(tokens).astype(np.int32))
    np.save(tmp / "trained.npy", np.concatenate(trained).astype(np.uint8))
    np.save(tmp / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    meta = {
        "key": key,
        "kind": kind,
        "sources": [s.path for s in specs],
        "examples": kept,
        "examples_seen": seen,
        "tokens": int(sum(lengths)),
        "trained_tokens": int(sum(int(t[1:].sum()) for t in trained)),
        "truncated": truncated,
        "skipped": dict(skipped),
        "max_seq_len": max_seq_len,
        "build_seconds": round(time.time() - t0, 2),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    if out.exists():  # another process finished the same build first
        shutil.rmtree(tmp)
        return
    tmp.rename(out)


def load(path: Path) -> TokenizedData:
    meta = json.loads((path / "meta.json").read_text())
    return TokenizedData(
        path=path,
        tokens=np.load(path / "tokens.npy", mmap_mode="r", allow_pickle=False),  # plain arrays, never pickles
        trained=np.load(path / "trained.npy", mmap_mode="r", allow_pickle=False),
        offsets=np.load(path / "offsets.npy", allow_pickle=False),
        meta=meta,
    )


def describe(meta: dict) -> str:
    skipped = ", ".join(f"{n} {r}" for r, n in sorted(meta["skipped"].items())) or "none"
    what = "pairs" if meta.get("kind") == "pairs" else "examples"
    return (
        f"{meta['examples']:,} {what} ({meta['examples_seen']:,} read; skipped: {skipped}; "
        f"truncated: {meta['truncated']:,}), {meta['tokens']:,} tokens of which "
        f"{meta['trained_tokens']:,} trained"
    )


def prepare(specs: list[SourceSpec], tokenizer, *, cache_dir: Path, max_seq_len: int, truncate: bool,
            on_error: str, seed: int, kind: str = "sft", log=print) -> TokenizedData:
    """Build (rank 0, others wait) or reuse the tokenized data, then memory-map it on every rank."""
    import torch.distributed as dist

    key = cache_key(specs, tokenizer, max_seq_len=max_seq_len, truncate=truncate, on_error=on_error, seed=seed,
                    kind=kind)
    path = Path(cache_dir) / key
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    error = None
    if rank0 and not (path / "meta.json").is_file():
        log(f"tokenizing {', '.join(s.path for s in specs)} -> {path}")
        try:
            build(specs, tokenizer, path, key=key, max_seq_len=max_seq_len, truncate=truncate,
                  on_error=on_error, seed=seed, kind=kind, log=log)
        except UserError as e:  # tell the waiting ranks, so that all stop with the same message
            error = str(e)
    if dist.is_initialized():
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise UserError(error)
    data = load(path)
    log(f"data: {describe(data.meta)}")
    return data
