"""Filters the original persona pipeline did not apply (each switchable, each counted): math kept by
self-consistency, instruction following kept when every constraint verifies, exact and near-duplicate
prompts removed; and the ones it did apply (empty messages, keywords)."""

from __future__ import annotations

import hashlib
import re
from collections import Counter

import numpy as np

from tulu_mcore.rewards import check


def answer_key(answer: str) -> str:
    """What two final answers are compared by in the vote: no surrounding $, trailing period, spaces,
    \\text{} wrappers or thousands separators (a comma between digits, not one that separates values)."""
    a = answer.strip().strip("$").strip().rstrip(".")
    a = re.sub(r"\\(?:text|mathrm)\{([^}]*)\}", r"\1", a)
    a = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", a)
    return re.sub(r"\s+", "", a).replace("\\!", "")


def majority(answers: list[str | None], share: float) -> str | None:
    """The answer most samples reach (as the first sample that reached it wrote it) when more than
    `share` of all samples reach it; else None."""
    keys = [answer_key(a) if a else None for a in answers]
    found = [k for k in keys if k]
    if not found:
        return None
    best, count = Counter(found).most_common(1)[0]
    if count / len(answers) <= share:
        return None
    return answers[keys.index(best)].strip()


def passes_constraints(response: str, ground_truths: list[str]) -> bool:
    return all(check("ifeval", response, gt).verified for gt in ground_truths)


def has_keyword(text: str, keywords: list[str]) -> str | None:
    low = text.lower()
    return next((k for k in keywords if k.lower() in low), None)


def _norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def duplicates(texts: list[str], near: float = 0.8, *, bands: int = 16, rows: int = 4) -> list[str | None]:
    """For each text, None if it is kept, else "duplicate" (the same words as an earlier one) or
    "near_duplicate" (word 3-gram Jaccard similarity >= `near` with an earlier kept one; candidates from
    MinHash LSH with `bands` x `rows` hashes, then the similarity computed exactly). `near` >= 1: exact only."""
    out: list[str | None] = [None] * len(texts)
    seen: dict[str, int] = {}
    for i, t in enumerate(texts):
        key = _norm(t)
        if key in seen:
            out[i] = "duplicate"
        else:
            seen[key] = i
    if near >= 1:
        return out
    shingles = []
    for t in texts:
        w = _norm(t).split()
        shingles.append({" ".join(w[j:j + 3]) for j in range(max(1, len(w) - 2))})
    rng = np.random.default_rng(20241121)
    a = rng.integers(1, (1 << 61) - 1, size=bands * rows, dtype=np.uint64)
    b = rng.integers(0, (1 << 61) - 1, size=bands * rows, dtype=np.uint64)
    buckets: dict[tuple, list[int]] = {}
    for i, sh in enumerate(shingles):
        if out[i] is not None:
            continue
        h = np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") >> 3
                      for s in sh], dtype=np.uint64)
        sig = (np.outer(h, a) + b).min(axis=0)  # wraps mod 2^64: a fixed random permutation family
        candidates = set()
        for band in range(bands):
            key = (band, sig[band * rows:(band + 1) * rows].tobytes())
            candidates.update(buckets.get(key, ()))
            buckets.setdefault(key, []).append(i)
        for j in sorted(candidates):
            if out[j] is None and len(sh & shingles[j]) / max(1, len(sh | shingles[j])) >= near:
                out[i] = "near_duplicate"
                break
    return out
