"""Best-fit packing of tokenized conversations into THD micro-batches.

A micro-batch is one row of at most `capacity` tokens holding several documents; attention is
block-diagonal per document (``PackedSeqParams`` with ``cu_seqlens``), RoPE positions restart in each
document, and the loss at position j predicts token j+1 of the same document only. Documents are
padded to a multiple of `multiple` (2*CP for context parallelism, and TP under sequence parallelism);
the row's tail padding belongs to its last document. Padding has loss weight 0.

Preference data packs whole groups (`group_size=2`: a pair's chosen and rejected documents, next to
each other in one row), so that a pair's two log-probabilities meet in one micro-batch.

Rows are as long as their documents (`trim`, the default): the capacity bounds memory, and the only
padding is the rounding to `multiple`, so packing wastes almost nothing however few conversations a
rank packs per step. Variable row lengths need ``variable_seq_lengths`` under pipeline parallelism.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
import torch


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def best_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: each item, longest first, goes to the open bin it fills most tightly."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining capacity, bin index), sorted
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"item of {n} tokens does not fit a bin of {capacity}")
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            rem, b = free.pop(k)
            bins[b].append(i)
            if rem - n > 0:
                bisect.insort(free, (rem - n, b))
        else:
            bins.append([i])
            if capacity - n > 0:
                bisect.insort(free, (capacity - n, len(bins) - 1))
    return [sorted(b) for b in bins]


@dataclass
class PackedRow:
    tokens: torch.Tensor  # [1, T] int64
    labels: torch.Tensor  # [1, T] int64: the next token within the document
    loss_mask: torch.Tensor  # [1, T] float: 1 where that next token is trained
    cu_seqlens: torch.Tensor  # [k + 1] int32, real document lengths
    cu_seqlens_padded: torch.Tensor  # [k + 1] int32, padded lengths; last entry == T
    max_seqlen: int
    num_seqs: int
    real_tokens: int
    seq_lens: list[int]
    doc_ids: torch.Tensor  # [1, T] int64: the document (0..num_seqs-1) each position belongs to
    last_token: torch.Tensor  # [1, T] float: 1 at each document's last trained token (a reward model's score)
    units: list[int]  # the dataset unit (example or pair) of each group of documents, in row order

    def as_batch(self) -> dict:
        return self.__dict__.copy()


def pack(examples: list[tuple[np.ndarray, np.ndarray]], capacity: int, *, multiple: int = 1, pad_id: int = 0,
         min_rows: int = 1, rows_multiple: int = 1, trim: bool = True, group_size: int = 1,
         ids: list[int] | None = None) -> list[PackedRow]:
    """Pack (input_ids, trained) pairs into rows of at most `capacity` tokens (exactly `capacity` with
    `trim=False`). Each `group_size` consecutive examples form one unit that stays together, in order;
    `ids` name the units (default 0, 1, ...). Rows of padding only (zero loss) are added to reach at
    least `min_rows` and a multiple of `rows_multiple` (the interleaved pipeline schedule needs a
    multiple of PP micro-batches)."""
    if capacity % multiple:
        raise ValueError(f"row capacity {capacity} is not a multiple of {multiple}")
    if len(examples) % group_size:
        raise ValueError(f"{len(examples)} examples do not form groups of {group_size}")
    padded = [round_up(len(x), multiple) for x, _ in examples]
    group_len = [sum(padded[g * group_size:(g + 1) * group_size]) for g in range(len(examples) // group_size)]
    ids = list(range(len(group_len))) if ids is None else list(ids)
    bins = best_fit(group_len, capacity) if examples else []
    n_rows = max(len(bins), min_rows)
    n_rows = round_up(n_rows, rows_multiple)
    bins += [[] for _ in range(n_rows - len(bins))]
    rows = []
    for b in bins:
        members = [g * group_size + j for g in b for j in range(group_size)]
        length = round_up(max(sum(group_len[g] for g in b), 1), multiple) if trim else capacity
        rows.append(_row([examples[i] for i in members], [padded[i] for i in members], length, pad_id,
                         [ids[g] for g in b]))
    return rows


def _row(docs, padded, capacity: int, pad_id: int, units: list[int]) -> PackedRow:
    tokens = np.full(capacity, pad_id, dtype=np.int64)
    labels = np.full(capacity, pad_id, dtype=np.int64)
    mask = np.zeros(capacity, dtype=np.float32)
    doc_ids = np.zeros(capacity, dtype=np.int64)
    last = np.zeros(capacity, dtype=np.float32)
    cu, cu_p, lens = [0], [0], []
    pos = 0
    for d, ((ids, trained), plen) in enumerate(zip(docs, padded)):
        n = len(ids)
        tokens[pos:pos + n] = ids
        labels[pos:pos + n - 1] = ids[1:]
        mask[pos:pos + n - 1] = trained[1:]
        doc_ids[pos:] = d  # through the padding, and the row's tail for the last document
        trained_at = np.flatnonzero(trained)
        last[pos + (trained_at[-1] if len(trained_at) else n - 1)] = 1.0
        lens.append(n)
        cu.append(cu[-1] + n)
        pos += plen
        cu_p.append(pos)
    if docs:
        cu_p[-1] = capacity  # the tail padding belongs to the last document
        # the real lengths stay exact; unpadded cumulative offsets skip each document's padding
        cu = [0] + list(np.cumsum(lens))
    else:  # an all-padding row: one "document" of padding with no loss
        cu, cu_p, lens = [0, capacity], [0, capacity], []
    return PackedRow(
        tokens=torch.from_numpy(tokens).unsqueeze(0),
        labels=torch.from_numpy(labels).unsqueeze(0),
        loss_mask=torch.from_numpy(mask).unsqueeze(0),
        cu_seqlens=torch.tensor(cu, dtype=torch.int32),
        cu_seqlens_padded=torch.tensor(cu_p, dtype=torch.int32),
        max_seqlen=int(max(np.diff(cu_p))),
        num_seqs=len(lens),
        real_tokens=int(sum(lens)),
        seq_lens=lens,
        doc_ids=torch.from_numpy(doc_ids).unsqueeze(0),
        last_token=torch.from_numpy(last).unsqueeze(0),
        units=units,
    )


def efficiency(rows: list[PackedRow]) -> float:
    """Share of non-padding tokens."""
    total = sum(r.tokens.shape[1] for r in rows)
    return sum(r.real_tokens for r in rows) / total if total else 0.0
