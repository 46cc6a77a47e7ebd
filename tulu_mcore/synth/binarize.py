"""Chosen and rejected from the judge's ratings (UltraFeedback's binarization, as Tülu 3 did it).

Each completion's score is the mean of its aspect ratings (N/A left out). :func:`binarize`, the default:
chosen = the highest mean (the first of equals), rejected = drawn at random from the completions rated
strictly lower (and worded differently); a prompt with fewer than two rated completions, or with every
completion rated the same, gives no pair (the reason is returned and counted). :func:`binarize_tulu3` is the released
``binarize_pref``: rejected drawn from every other completion, ties with the chosen included; one rating
gives rejected = chosen; positions past the completions (a judge reply with more chunks than texts)
drop the prompt.
"""

from __future__ import annotations

import math
import random

import numpy as np


def mean_ratings(ratings: dict[str, list[float]]) -> list[float]:
    """Per completion, the mean over aspects of its finite ratings (NaN: no finite rating)."""
    n = max((len(v) for v in ratings.values()), default=0)
    out = []
    for i in range(n):
        vals = [v[i] for v in ratings.values() if i < len(v) and not math.isnan(v[i])]
        out.append(sum(vals) / len(vals) if vals else math.nan)
    return out


def binarize(means: list[float], rng: random.Random, texts: list[str] | None = None) -> tuple[int, int] | str:
    """(chosen, rejected) indices, or why there is no pair: "single" (fewer than two rated completions),
    "all_equal", or "identical" (every lower-rated completion has the chosen one's text, so the pair
    would teach nothing; `texts` given)."""
    rated = [i for i, m in enumerate(means) if not math.isnan(m)]
    if len(rated) < 2:
        return "single"
    best = max(means[i] for i in rated)
    chosen = next(i for i in rated if means[i] == best)
    lower = [i for i in rated if means[i] < best]
    if not lower:
        return "all_equal"
    if texts is not None:
        lower = [i for i in lower if texts[i] != texts[chosen]]
        if not lower:
            return "identical"
    return chosen, lower[rng.randrange(len(lower))]


def mean_ratings_tulu3(ratings: dict[str, list[int]]) -> list[float]:
    """The released aggregation: per position, numpy's nanmean over the aspects' rating lists, jagged
    lists padded with NaN (-1 from "N/A" is a number, and pulls the mean down)."""
    rows = list(ratings.values())
    width = max((len(r) for r in rows), default=0)
    arr = np.array([list(r) + [np.nan] * (width - len(r)) for r in rows], dtype=float)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN position: NaN, as released
            return [float(x) for x in np.nanmean(arr, axis=0)] if width else []


def binarize_tulu3(means: list[float], n_completions: int, rng: random.Random) -> tuple[int, int] | str:
    """The released ``binarize_pref``: the first four means; chosen = numpy's argmax (a NaN wins);
    rejected uniform over the other positions; one mean: rejected = chosen ("degenerate" pairs are
    returned, as released). "out_of_range" when a position names no completion (dropped, as released)."""
    ratings = means[:4]
    if not ratings:
        return "single"
    chosen = int(np.argmax(ratings))
    if len(ratings) == 1:
        rejected = chosen
    else:
        others = [i for i in range(len(ratings)) if i != chosen]
        rejected = others[rng.randrange(len(others))]
    if chosen >= n_completions or rejected >= n_completions:
        return "out_of_range"
    return chosen, rejected
