"""The local core attention (SDPA and flex) against attention written out in the test:
softmax(q k^T / sqrt(d) + mask) v, with K/V heads repeated for GQA."""

import math

import pytest
import torch
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.transformer_config import TransformerConfig

from tulu_mcore.models.attention import FlexCoreAttention, LocalCoreAttention

HQ, HKV, D = 4, 2, 16


def config():
    return TransformerConfig(num_layers=1, hidden_size=HQ * D, num_attention_heads=HQ, num_query_groups=HKV,
                             kv_channels=D, attention_dropout=0.0, hidden_dropout=0.0)


def make(cls=LocalCoreAttention):
    m = cls(config=config(), layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    return m.eval()


def reference(q, k, v, allowed):
    """q [s, hq, d], k/v [t, hkv, d], allowed [s, t] -> [s, hq*d]."""
    rep = HQ // HKV
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = torch.einsum("shd,thd->hst", q, k) / math.sqrt(D)
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = torch.einsum("hst,thd->shd", torch.softmax(scores, dim=-1), v)
    return out.reshape(q.shape[0], -1)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()


@pytest.mark.parametrize("cls", [LocalCoreAttention, FlexCoreAttention])
def test_causal_gqa(cls):
    s, b = 12, 2
    q, k, v = rand(s, b, HQ, D, seed=1), rand(s, b, HKV, D, seed=2), rand(s, b, HKV, D, seed=3)
    out = make(cls)(q, k, v, None, attn_mask_type=AttnMaskType.causal)
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    for i in range(b):
        ref = reference(q[:, i], k[:, i], v[:, i], causal)
        assert (out[:, i] - ref).abs().max() < 1e-6


def test_explicit_megatron_mask():
    s = 10
    q, k, v = rand(s, 1, HQ, D, seed=4), rand(s, 1, HKV, D, seed=5), rand(s, 1, HKV, D, seed=6)
    allowed = torch.ones(s, s, dtype=torch.bool).tril()
    allowed[7, 2] = False  # an extra hole
    megatron_mask = ~allowed[None, None]  # megatron: True where attention is NOT allowed
    out = make()(q, k, v, megatron_mask, attn_mask_type=AttnMaskType.padding)
    assert (out[:, 0] - reference(q[:, 0], k[:, 0], v[:, 0], allowed)).abs().max() < 1e-6


def test_kv_cache_decode_sees_all_past_keys():
    t = 9
    q, k, v = rand(1, 1, HQ, D, seed=7), rand(t, 1, HKV, D, seed=8), rand(t, 1, HKV, D, seed=9)
    out = make()(q, k, v, None, attn_mask_type=AttnMaskType.causal)
    assert (out[:, 0] - reference(q[:, 0], k[:, 0], v[:, 0], torch.ones(1, t, dtype=torch.bool))).abs().max() < 1e-6


@pytest.mark.parametrize("cls", [LocalCoreAttention, FlexCoreAttention])
def test_packed_thd_equals_documents_run_alone(cls):
    lens, padded = [5, 3, 7], [6, 4, 8]  # padded like a CP-ready pack
    total = sum(padded)
    cu = torch.tensor([0, 5, 8, 15], dtype=torch.int32)
    cu_p = torch.tensor([0, 6, 10, 18], dtype=torch.int32)
    q, k, v = rand(total, HQ, D, seed=10), rand(total, HKV, D, seed=11), rand(total, HKV, D, seed=12)
    psp = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, cu_seqlens_q_padded=cu_p,
                          cu_seqlens_kv_padded=cu_p, max_seqlen_q=8, max_seqlen_kv=8)
    out = make(cls)(q, k, v, None, attn_mask_type=AttnMaskType.causal, packed_seq_params=psp)
    assert out.shape == (total, HQ * D)
    for start, n in zip(cu_p[:-1].tolist(), lens):
        sl = slice(start, start + n)  # the document's real tokens (padding follows them)
        ref = reference(q[sl], k[sl], v[sl], torch.ones(n, n, dtype=torch.bool).tril())
        assert (out[sl] - ref).abs().max() < 1e-6
