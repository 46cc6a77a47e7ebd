"""FLOP counts against Megatron-LM's published per-token numbers for Llama 3.1 (causal convention)."""

import pytest

from tulu_mcore.config.compose import model_preset
from tulu_mcore.metrics.flops import flops_per_token, peak_flops, training_flops


@pytest.mark.parametrize(
    "preset,seq,gflops",
    [("llama3_1_8b", 4096, 48.2), ("llama3_1_8b", 8192, 51.5), ("llama3_1_70b", 4096, 433.1),
     ("llama3_1_70b", 8192, 449.2), ("llama3_1_405b", 4096, 2473), ("llama3_1_405b", 8192, 2524)],
)
def test_flops_per_token_match_megatron(preset, seq, gflops):
    got = flops_per_token(model_preset(preset).arch, seq) / 1e9
    assert got == pytest.approx(gflops, rel=1.5e-3)


def test_packed_sequences_count_sum_of_squares():
    arch = model_preset("llama3_1_8b").arch
    # two documents of 2048 packed in 4096 cost less attention than one 4096 sequence
    packed = training_flops(arch, [2048, 2048])
    single = training_flops(arch, [4096])
    q = arch.num_attention_heads * arch.head_dim
    assert single - packed == pytest.approx(6 * arch.num_hidden_layers * q * (4096**2 - 2 * 2048**2))
    assert training_flops(arch, [4096]) == pytest.approx(4096 * flops_per_token(arch, 4096))


def test_peaks():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H200", "fp8") == 1979e12
    assert peak_flops("cpu") is None
