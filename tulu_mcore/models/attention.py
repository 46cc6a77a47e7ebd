"""The project's core attention for the local (non-TE) spec: SDPA or flex_attention.

megatron-core's own ``DotProductAttention`` rejects packed sequences and context parallelism, so
without Transformer Engine neither would be available. This module supports:

* causal masks (and an explicit megatron mask, True where attention is *not* allowed);
* GQA (``enable_gqa``: K/V heads are never materialised per query head);
* packed THD sequences (``PackedSeqParams``): causal attention within each document. On a GPU (half
  precision) one varlen flash-attention call reads the document boundaries on the device; on the CPU
  each document goes through SDPA's causal kernel in turn (the boundaries read on the host). With CP,
  or with ``flex``, every token's document and position are computed on the device and masked;
* context parallelism: K/V are all-gathered over the CP group (reduce-scatter in backward) and the
  mask is built from the *global* positions of the local queries and the gathered keys, so no
  reordering is needed (the zigzag layout of :mod:`tulu_mcore.models.context_parallel`);
* KV-cache decoding (queries shorter than keys: bottom-right aligned causal mask; CP=1).

Outside the varlen path SDPA's mask is dense per (query, key) pair, which suits correctness on CPU and
moderate lengths on GPU (``flex`` builds block-sparse masks instead); for long sequences with CP on
GPUs use Transformer Engine (``model.attention=te``).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule

from tulu_mcore.models import kernels
from tulu_mcore.models.context_parallel import local_positions, thd_token_positions


class LocalCoreAttention(MegatronModule):
    """Core attention on ``scaled_dot_product_attention``; see the module docstring."""

    impl = "sdpa"

    # Signature of megatron.core.transformer.attention.CoreAttentionBuilder.
    def __init__(
        self,
        config,
        layer_number,
        attn_mask_type,
        attention_type,
        cp_comm_type=None,
        softmax_scale=None,
        pg_collection=None,
        attention_dropout=None,
    ):
        super().__init__(config=config)
        self.softmax_scale = softmax_scale
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        self.attn_mask_type = attn_mask_type
        cp_group = getattr(pg_collection, "cp", None) if pg_collection is not None else None
        if cp_group is None:
            cp_group = parallel_state.get_context_parallel_group(check_initialized=False)
        self.cp_group = cp_group
        self.cp = cp_group.size() if cp_group is not None else 1
        if self.cp != config.context_parallel_size:
            raise ValueError(
                f"CP group of size {self.cp} but config.context_parallel_size="
                f"{config.context_parallel_size}"
            )

    # -------------------------------------------------------------------------------- kernels
    def _attend(self, q, k, v, allowed, causal: bool):
        """q [b, hq, sq, d], k/v [b, hkv, sk, d]; allowed: bool [sq, sk] (True = may attend) or None."""
        p = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, is_causal=causal, dropout_p=p, scale=self.softmax_scale,
            enable_gqa=True,
        )

    # -------------------------------------------------------------------------------- forward
    def forward(
        self,
        query,
        key,
        value,
        attention_mask,
        /,
        *,
        attn_mask_type=None,
        attention_bias=None,
        packed_seq_params=None,
    ):
        if attention_bias is not None:
            raise NotImplementedError("attention_bias is not supported by the local core attention")
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        causal = mask_type != AttnMaskType.no_mask
        thd = packed_seq_params is not None and packed_seq_params.qkv_format == "thd"
        cp, rank = self.cp, (self.cp_group.rank() if self.cp > 1 else 0)

        if thd:  # SelfAttention squeezed the batch dim: q [t, hq, d], k/v [t, hkv, d]
            psp = packed_seq_params
            cu_q = psp.cu_seqlens_q_padded if psp.cu_seqlens_q_padded is not None else psp.cu_seqlens_q
            cu_kv = psp.cu_seqlens_kv_padded if psp.cu_seqlens_kv_padded is not None else psp.cu_seqlens_kv
            t = query.size(0)
            if cp == 1 and self.impl == "sdpa" and attention_mask is None and causal:
                if kernels.varlen_supported(query, self.dropout if self.training else 0.0):
                    out = kernels.varlen_causal(query, key, value, cu_q.to(query.device, torch.int32),
                                                psp.max_seqlen_q, self.softmax_scale)
                    return out.reshape(t, -1)
                return self._per_document(query, key, value, cu_q)
            if cp > 1:
                key, value = self._gather_kv(key), self._gather_kv(value)
            qpos, qdoc = thd_token_positions(cu_q, cp, rank, t, device=query.device)
            kpos, kdoc = self._key_positions(key.size(0), cu_kv, query.device)
            q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (query, key, value))  # [1, h, t, d]
            out = self._attend_documents(q, k, v, qpos, qdoc, kpos, kdoc, causal)
            return out.squeeze(0).transpose(0, 1).reshape(t, -1)  # [t, hq*d]

        # sbhd: q [sq, b, hq, d], k/v [sk, b, hkv, d]
        sq, b = query.size(0), query.size(1)
        allowed, is_causal = None, False
        if cp > 1:
            if key.size(0) != sq:
                raise NotImplementedError("KV-cache decoding is not supported with context parallelism")
            key, value = self._gather_kv(key), self._gather_kv(value)
            seq = sq * cp
            qpos = local_positions(seq, cp, rank, device=query.device)
            kpos = self._gathered_positions(seq, query.device)
            if attention_mask is not None:
                m = attention_mask
                if m.size(-2) == seq:  # a full-sequence mask: keep this rank's query rows
                    m = m.index_select(-2, qpos)
                allowed = ~m.bool().index_select(-1, kpos)
            elif causal:
                allowed = qpos[:, None] >= kpos[None, :]
        elif attention_mask is not None:
            allowed = ~attention_mask.bool()
        elif causal and sq > 1:
            sk = key.size(0)
            if sq == sk:
                is_causal = True  # lets SDPA pick its fused causal kernels
            else:  # chunked prefill against a KV cache: bottom-right aligned causal mask
                allowed = torch.ones(sq, sk, dtype=torch.bool, device=query.device).tril(sk - sq)
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))  # [b, h, s, d]
        out = self._attend(q, k, v, allowed, is_causal)
        return out.permute(2, 0, 1, 3).reshape(sq, b, -1)  # [sq, b, hq*d]

    def _per_document(self, query, key, value, cu_seqlens):
        """Packed rows without CP off the varlen path (the CPU): each document's causal attention on its
        own slice, so SDPA can use its fused causal kernels instead of a dense [t, t] mask (most of it
        masked out). Reads the boundaries on the host: a device sync, hence not the GPU path."""
        bounds = cu_seqlens.tolist()
        outs = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            q, k, v = (x[a:b].transpose(0, 1).unsqueeze(0) for x in (query, key, value))  # [1, h, n, d]
            outs.append(self._attend(q, k, v, None, True).squeeze(0).transpose(0, 1))
        return torch.cat(outs).reshape(query.size(0), -1)

    def _attend_documents(self, q, k, v, qpos, qdoc, kpos, kdoc, causal: bool):
        """Attention within documents, given every query's and key's document and position."""
        allowed = qdoc[:, None] == kdoc[None, :]
        if causal:
            allowed &= qpos[:, None] >= kpos[None, :]
        return self._attend(q, k, v, allowed, False)

    # -------------------------------------------------------------------------------- CP helpers
    def _gather_kv(self, x):
        # all-gather along the sequence (dim 0) over CP; backward reduce-scatters, so every rank's
        # K/V gradient sums the contributions of all query chunks.
        return gather_from_sequence_parallel_region(
            x, tensor_parallel_output_grad=True, group=self.cp_group
        )

    def _gathered_positions(self, total: int, device):
        """Global positions of (unpacked) keys in gathered (rank-major) order."""
        return torch.cat([local_positions(total, self.cp, r, device=device) for r in range(self.cp)])

    def _key_positions(self, total: int, cu_seqlens, device):
        """(position, document) of packed keys in gathered (rank-major) order, computed on the device."""
        parts = [thd_token_positions(cu_seqlens, self.cp, r, total // self.cp, device=device)
                 for r in range(self.cp)]
        return torch.cat([p for p, _ in parts]), torch.cat([d for _, d in parts])


class FlexCoreAttention(LocalCoreAttention):
    """The same masks evaluated by ``flex_attention`` (compiled on CUDA, eager on CPU); packed rows get
    block-sparse document masks built from per-token vectors, never a dense [t, t] mask."""

    impl = "flex"
    _compiled = None

    def _attend(self, q, k, v, allowed, causal: bool):
        if allowed is None:
            if causal:
                def mask_mod(b, h, qi, ki):
                    return qi >= ki
            else:
                def mask_mod(b, h, qi, ki):
                    return qi >= 0
        else:
            def mask_mod(b, h, qi, ki):
                return allowed[qi, ki]
        return self._flex(q, k, v, mask_mod)

    def _attend_documents(self, q, k, v, qpos, qdoc, kpos, kdoc, causal: bool):
        if causal:
            def mask_mod(b, h, qi, ki):
                return (qdoc[qi] == kdoc[ki]) & (qpos[qi] >= kpos[ki])
        else:
            def mask_mod(b, h, qi, ki):
                return qdoc[qi] == kdoc[ki]
        return self._flex(q, k, v, mask_mod)

    def _flex(self, q, k, v, mask_mod):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        if self.training and self.dropout > 0:
            raise NotImplementedError("attention dropout is not supported by flex_attention")
        block_mask = create_block_mask(mask_mod, None, None, q.size(2), k.size(2), device=str(q.device))
        if q.is_cuda:
            if FlexCoreAttention._compiled is None:
                FlexCoreAttention._compiled = torch.compile(flex_attention, dynamic=False)
            return FlexCoreAttention._compiled(q, k, v, block_mask=block_mask, scale=self.softmax_scale,
                                               enable_gqa=True)
        with warnings.catch_warnings():  # eager on CPU is intended (correctness, not speed)
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return flex_attention(q, k, v, block_mask=block_mask, scale=self.softmax_scale, enable_gqa=True)


ATTENTION_MODULES = {"sdpa": LocalCoreAttention, "flex": FlexCoreAttention}
