"""The GPU path's pieces, checked on the CPU against independent references: per-token CP positions
against the per-document zigzag, the RoPE hook against megatron-core's own unfused THD RoPE, the
varlen-attention adapter against both of torch's signatures, and the AdamW implementations."""

from types import SimpleNamespace

import pytest
import torch
from megatron.core.models.common.embeddings import rope_utils

from tulu_mcore.errors import ConfigError
from tulu_mcore.models import kernels
from tulu_mcore.models.context_parallel import thd_token_positions, zigzag_positions
from tulu_mcore.models.packed_rope import rope_bshd, rope_thd
from tulu_mcore.training.setup import set_adam_impl


def random_bounds(cp: int, n_docs: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lengths = (torch.randint(1, 9, (n_docs,), generator=g) * 2 * cp).tolist()
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)


@pytest.mark.parametrize("cp", [1, 2, 4])
def test_token_positions_are_each_documents_zigzag(cp):
    cu = random_bounds(cp, 7, seed=cp)
    for rank in range(cp):
        pos, doc = thd_token_positions(cu, cp, rank, int(cu[-1]) // cp)
        want_pos, want_doc = [], []
        for d, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
            z = a + zigzag_positions(b - a, cp, rank)
            want_pos += z.tolist()
            want_doc += [d] * len(z)
        assert pos.tolist() == want_pos and doc.tolist() == want_doc


def cp_group(size: int, rank: int) -> SimpleNamespace:  # what megatron's THD RoPE asks of a CP group
    return SimpleNamespace(size=lambda: size, rank=lambda: rank)


@pytest.mark.parametrize("cp", [1, 2])
def test_rope_hook_equals_megatron_unfused(cp):
    cu = random_bounds(cp, 5, seed=10 + cp)
    g = torch.Generator().manual_seed(3)
    freqs = torch.randn(64, 1, 1, 16, generator=g)
    for rank in range(cp):
        t = torch.randn(int(cu[-1]) // cp, 3, 16, generator=g)
        want = rope_utils._apply_rotary_pos_emb_thd(t, cu, freqs, cp_group=cp_group(cp, rank))
        assert torch.equal(rope_thd(t, cu, freqs, cp_size=cp, cp_rank=rank), want)
    s = torch.randn(10, 2, 3, 16, generator=g)
    assert torch.equal(rope_bshd(s, freqs[:10]), rope_utils._apply_rotary_pos_emb_bshd(s, freqs[:10]))


@pytest.mark.parametrize("windowed,gqa", [(True, True), (False, False)])
def test_varlen_adapter_speaks_both_torch_signatures(monkeypatch, windowed, gqa):
    calls = []

    def new_api(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        calls.append(dict(window_size=window_size, enable_gqa=enable_gqa, scale=scale, max=(max_q, max_k),
                          heads=(q.size(1), k.size(1)), cu=cu_q))
        return q

    def old_api(q, k, v, cu_q, cu_k, max_q, max_k, *, is_causal=False, scale=None):
        calls.append(dict(is_causal=is_causal, scale=scale, max=(max_q, max_k), heads=(q.size(1), k.size(1)),
                          cu=cu_q))
        return q

    monkeypatch.setattr(kernels, "_varlen", lambda: (new_api if windowed else old_api, windowed, gqa))
    q, kv = torch.zeros(12, 4, 8), torch.zeros(12, 2, 8)
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    kernels.varlen_causal(q, kv, kv, cu, 7, 0.25)
    [c] = calls
    assert c["max"] == (7, 7) and c["scale"] == 0.25 and c["cu"] is cu
    assert c["heads"] == (4, 2)  # K/V heads are never repeated per query head
    if windowed:
        assert c["window_size"] == (-1, 0) and c["enable_gqa"] is True
    else:
        assert c["is_causal"] is True
    assert not kernels.varlen_supported(q.bfloat16(), 0.0)  # CPU tensors stay on the per-document path


class Wrapped:  # megatron's optimizer wrappers hold the torch optimizer in .optimizer
    def __init__(self, inner):
        self.optimizer = inner


def adam_run(impl: str, steps: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 7, generator=g)), torch.nn.Parameter(torch.randn(11, generator=g))]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    set_adam_impl(Wrapped(opt), impl, "cpu")
    for step in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return [p.detach().clone() for p in params]


def test_adam_implementations_compute_the_same_update():
    ref = adam_run("for_loop")
    for impl in ("fused", "foreach", "auto"):
        for got, want in zip(adam_run(impl), ref):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_adam_impl_flags_and_refusals():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    chained = type("Chained", (), {"chained_optimizers": [Wrapped(opt)]})()
    set_adam_impl(chained, "auto", "cuda")
    assert opt.param_groups[0]["fused"] is True and opt.param_groups[0]["foreach"] is False
    with pytest.raises(ConfigError, match="optim.impl"):
        set_adam_impl(chained, "fastest", "cpu")
    fused_elsewhere = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))])  # stands in for TE's FusedAdam
    with pytest.raises(ConfigError, match="always fused"):
        set_adam_impl(Wrapped(fused_elsewhere), "foreach", "cuda")


@pytest.mark.parametrize("precision,device,mode,fused,fused_ce", [
    ("bf16", "cuda", "auto", True, True),
    ("fp32", "cuda", "auto", True, False),  # megatron's fused cross entropy returns bf16 gradients
    ("bf16", "cpu", "auto", False, False),
    ("bf16", "cuda", "eager", False, False),
])
def test_fusion_flags_follow_model_kernels(precision, device, mode, fused, fused_ce):
    from tulu_mcore.arch import Layout
    from tulu_mcore.config.compose import compose
    from tulu_mcore.models.factory import transformer_config

    cfg = compose([f"precision={precision}"])
    kernels.configure(mode)
    try:
        tc = transformer_config(cfg.model.arch, Layout(1, 1, 1, 1, 1, 1, False, (4,), 1), cfg.precision,
                                device=device, attention="sdpa")
    finally:
        kernels.configure("auto")
    assert (tc.bias_activation_fusion, tc.bias_dropout_fusion) == (fused, fused)
    assert tc.cross_entropy_loss_fusion is fused_ce and tc.cross_entropy_fusion_impl == "native"
    assert tc.apply_rope_fusion and rope_utils.fused_apply_rotary_pos_emb_thd is not None  # the sync-free hook
