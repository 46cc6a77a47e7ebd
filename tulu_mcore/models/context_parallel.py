"""The context-parallel token layout: which tokens of a sequence each CP rank holds.

megatron-core balances causal attention work by cutting a sequence into 2*CP chunks and giving rank r
chunks r and 2*CP-1-r ("zigzag"); RoPE (``get_pos_emb_on_this_cp_rank``) assumes that layout. Packed
(THD) sequences are cut the same way one document at a time (TE's ``thd_get_partitioned_indices``
layout). The attention module and the batch splitter both derive positions from here, so the two can
never disagree.
"""

from __future__ import annotations

import torch


def zigzag_positions(seq_len: int, cp: int, rank: int, device=None) -> torch.Tensor:
    """Global positions held by CP rank `rank` of a sequence of `seq_len` tokens."""
    if seq_len % (2 * cp):
        raise ValueError(f"sequence length {seq_len} is not divisible by 2*CP={2 * cp}")
    c = seq_len // (2 * cp)
    return torch.cat(
        [
            torch.arange(rank * c, (rank + 1) * c, device=device),
            torch.arange((2 * cp - 1 - rank) * c, (2 * cp - rank) * c, device=device),
        ]
    )


def thd_token_positions(cu_seqlens_padded: torch.Tensor, cp: int, rank: int, n_local: int,
                        device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(position in the packed stream, document index) of the `n_local` tokens CP rank `rank` holds:
    the zigzag of every document. Vectorised, with no device-to-host read, so the model can call it
    on the GPU in every layer without stalling the host; documents' padded lengths were checked when
    the row was split on the host (:func:`thd_zigzag_positions`)."""
    cu = cu_seqlens_padded.to(device=device, dtype=torch.long)
    local_cu = cu // cp  # each rank holds 1/CP of every document, in document order
    i = torch.arange(n_local, device=cu.device)
    doc = torch.searchsorted(local_cu, i, right=True) - 1
    if cp == 1:
        return i, doc
    j = i - local_cu[doc]  # index within this rank's share of the document
    c = (cu[doc + 1] - cu[doc]) // (2 * cp)  # the document's chunk length
    within = torch.where(j < c, rank * c + j, (2 * cp - 1 - rank) * c + (j - c))
    return cu[doc] + within, doc


def thd_zigzag_positions(cu_seqlens_padded: torch.Tensor, cp: int, rank: int, device=None) -> torch.Tensor:
    """Positions in the packed stream held by CP rank `rank`, from boundaries on the host (checked:
    every document's padded length a multiple of 2*CP)."""
    lengths = cu_seqlens_padded[1:] - cu_seqlens_padded[:-1]
    bad = [int(n) for n in lengths if int(n) % (2 * cp)]
    if bad:
        raise ValueError(f"packed document of padded length {bad[0]} is not a multiple of 2*CP={2 * cp}; "
                         "pad every document to a multiple of 2*CP")
    total = int(cu_seqlens_padded[-1]) if len(cu_seqlens_padded) else 0
    return thd_token_positions(cu_seqlens_padded, cp, rank, total // cp, device=device)[0]


def local_positions(
    seq_len: int, cp: int, rank: int, cu_seqlens_padded: torch.Tensor | None = None, device=None
) -> torch.Tensor:
    if cp == 1:
        return torch.arange(seq_len, device=device)
    if cu_seqlens_padded is not None:
        return thd_zigzag_positions(cu_seqlens_padded, cp, rank, device=device)
    return zigzag_positions(seq_len, cp, rank, device=device)


def split_for_cp(
    batch: dict[str, torch.Tensor | None],
    cp: int,
    rank: int,
    *,
    seq_dim: int = 1,
    cu_seqlens_padded: torch.Tensor | None = None,
    keys: tuple[str, ...] = ("tokens", "labels", "loss_mask", "position_ids"),
) -> dict[str, torch.Tensor | None]:
    """This CP rank's tokens of every tensor in `keys` (sequence along `seq_dim`)."""
    if cp == 1:
        return dict(batch)
    out = dict(batch)
    seq_len = None
    for k in keys:
        t = batch.get(k)
        if t is None:
            continue
        seq_len = t.size(seq_dim)
        idx = local_positions(seq_len, cp, rank, cu_seqlens_padded, device=t.device)
        out[k] = t.index_select(seq_dim, idx)
    return out


def cp_gather_sequence(local: torch.Tensor, group, seq_dim: int, cu_seqlens_padded=None) -> torch.Tensor:
    """Reassemble a full sequence (in natural order) from every CP rank's zigzag slice (no grad)."""
    import torch.distributed as dist

    cp = dist.get_world_size(group)
    if cp == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(cp)]
    dist.all_gather(parts, local.contiguous(), group=group)
    seq_len = local.size(seq_dim) * cp
    out_shape = list(local.shape)
    out_shape[seq_dim] = seq_len
    out = local.new_empty(out_shape)
    for r, part in enumerate(parts):
        idx = local_positions(seq_len, cp, r, cu_seqlens_padded, device=local.device)
        out.index_copy_(seq_dim, idx, part)
    return out
