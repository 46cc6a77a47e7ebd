"""The HF <-> megatron mapping rules, checked against the layouts written out by hand."""

import dataclasses

import pytest
import torch

from tulu_mcore.config.compose import model_preset
from tulu_mcore.models.llama.mapping import (
    LAYER_RULES,
    hf_shapes,
    hf_to_local,
    merge_qkv,
    shards_to_hf,
    split_qkv,
    units,
)


class DictReader:
    def __init__(self, tensors):
        self.t = tensors

    def shape(self, name):
        return tuple(self.t[name].shape)

    def read(self, name, dim=None, start=0, stop=None):
        x = self.t[name]
        if dim is None:
            return x.clone()
        return x.narrow(dim, start, stop - start).clone()


@pytest.fixture
def arch():
    return model_preset("tiny").arch  # 4 heads, 2 KV groups, head_dim 32


@pytest.fixture
def layer0(arch):
    g = torch.Generator().manual_seed(0)
    return {n: torch.randn(s, generator=g) for n, s in hf_shapes(arch).items() if ".layers.0." in n}


def test_qkv_interleave_by_query_group(arch):
    d, h = arch.head_dim, arch.hidden_size
    q = torch.arange(4 * d).float()[:, None].expand(-1, h)  # row r of q has value r
    k = 1000 + torch.arange(2 * d).float()[:, None].expand(-1, h)
    v = 2000 + torch.arange(2 * d).float()[:, None].expand(-1, h)
    fused = merge_qkv(q, k, v, heads_per_group=2, head_dim=d)[:, 0]
    # group 0: q heads 0,1 then k head 0 then v head 0; group 1: q heads 2,3, k 1, v 1
    expected = torch.cat([
        torch.arange(0, 2 * d), 1000 + torch.arange(0, d), 2000 + torch.arange(0, d),
        torch.arange(2 * d, 4 * d), 1000 + torch.arange(d, 2 * d), 2000 + torch.arange(d, 2 * d),
    ]).float()
    assert torch.equal(fused, expected)
    q2, k2, v2 = split_qkv(merge_qkv(q, k, v, 2, d), 2, d)
    assert torch.equal(q2, q) and torch.equal(k2, k) and torch.equal(v2, v)


@pytest.mark.parametrize("tp", [1, 2])
def test_tp_shards_and_back(arch, layer0, tp):
    reader = DictReader(layer0)
    d, f = arch.head_dim, arch.intermediate_size
    for rule in LAYER_RULES:
        names = tuple(n.format(i=0) for n in rule.hf)
        shards = [hf_to_local(rule, names, reader, r, tp, arch) for r in range(tp)]
        for r, s in enumerate(shards):
            if rule.kind == "row":
                full = layer0[names[0]]
                n = full.shape[1] // tp
                assert torch.equal(s, full[:, r * n:(r + 1) * n])
            elif rule.kind == "gated":
                n = f // tp
                gate, up = layer0[names[0]], layer0[names[1]]
                assert torch.equal(s, torch.cat([gate[r * n:(r + 1) * n], up[r * n:(r + 1) * n]]))
            elif rule.kind == "qkv":
                # rank r holds whole query groups: a contiguous block of the fused tensor
                fused = merge_qkv(*(layer0[n] for n in names), heads_per_group=2, head_dim=d)
                n = fused.shape[0] // tp
                assert torch.equal(s, fused[r * n:(r + 1) * n])
            else:
                assert torch.equal(s, layer0[names[0]])
        back = dict(shards_to_hf(rule, names, shards, arch))
        assert set(back) == set(names)
        for n in names:
            assert torch.equal(back[n], layer0[n])


def test_units_cover_every_hf_tensor_once(arch):
    for tied in (False, True):
        a = dataclasses.replace(arch, tie_word_embeddings=tied)
        for pp, segments in ((1, [4]), (2, [2, 2]), (2, [1, 1, 1, 1])):
            names = [n for *_, hf, _ in units(len(segments) // pp, a, pp, segments) for n in hf]
            assert names == list(hf_shapes(a))  # checkpoint order, each once
            owners = {hf[0]: (p, vp) for p, vp, _, hf, _ in units(len(segments) // pp, a, pp, segments)}
            assert owners["model.embed_tokens.weight"] == (0, 0)
            assert owners["model.norm.weight"] == (pp - 1, len(segments) // pp - 1)
            if pp == 2 and len(segments) == 4:  # interleaved: layer i in segment i -> (i % 2, i // 2)
                assert owners["model.layers.1.input_layernorm.weight"] == (1, 0)
                assert owners["model.layers.2.input_layernorm.weight"] == (0, 1)
