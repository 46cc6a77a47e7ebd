"""Rotary embeddings of the local spec, without host syncs on packed rows.

megatron-core's unfused RoPE for packed (THD) rows splits every row into its documents on the host
(``cu_seqlens.tolist()`` and ``.item()``), for queries and for keys, in every layer: a device-to-host
sync and a few small kernels per document per layer. Here each token's position within its document
(its CP zigzag slot included) is computed on the device and the frequencies are gathered in one
step; the rotation itself is megatron's (``_apply_rotary_pos_emb_bshd``), so the numbers are the same,
and on GPUs the chain of element-wise kernels is compiled into one (:mod:`tulu_mcore.models.kernels`).

megatron applies RoPE through two module-level functions when ``config.apply_rope_fusion`` is set;
they are Transformer Engine's when TE is installed and None otherwise. :func:`install` fills the
empty ones with these (TE's, where present, are kept); the local spec then sets ``apply_rope_fusion``.
"""

from __future__ import annotations

import torch
from megatron.core.models.common.embeddings import rope_utils

from tulu_mcore.models import kernels
from tulu_mcore.models.context_parallel import thd_token_positions


def _rotate(t: torch.Tensor, freqs: torch.Tensor, interleaved: bool) -> torch.Tensor:
    return rope_utils._apply_rotary_pos_emb_bshd(t, freqs, rotary_interleaved=interleaved)


def rope_bshd(t: torch.Tensor, freqs: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """t [s, b, h, d], freqs [s, 1, 1, d] (megatron's unfused rotation)."""
    return kernels.pick(_rotate, t)(t, freqs, interleaved)


def rope_thd(t: torch.Tensor, cu_seqlens: torch.Tensor, freqs: torch.Tensor, cp_size: int = 1, cp_rank: int = 0,
             interleaved: bool = False) -> torch.Tensor:
    """t [tokens, h, d] of a packed row (this CP rank's zigzag share of every document), `cu_seqlens`
    the documents' (padded) boundaries, freqs [max_seqlen, 1, 1, d]: every document rotated from
    position 0, as megatron's unfused THD RoPE does."""
    pos, doc = thd_token_positions(cu_seqlens, cp_size, cp_rank, t.size(0), device=t.device)
    within = pos - cu_seqlens.to(device=t.device, dtype=torch.long)[doc]
    return kernels.pick(_rotate, t)(t.unsqueeze(1), freqs[within], interleaved).squeeze(1)


def install() -> None:
    """Fill megatron's empty RoPE fusion hooks (see the module docstring); idempotent."""
    if rope_utils.fused_apply_rotary_pos_emb is None:
        rope_utils.fused_apply_rotary_pos_emb = rope_bshd
    if rope_utils.fused_apply_rotary_pos_emb_thd is None:
        rope_utils.fused_apply_rotary_pos_emb_thd = rope_thd
