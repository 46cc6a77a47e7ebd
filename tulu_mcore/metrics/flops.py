"""Model FLOPs in Megatron-LM's current convention (causal attention; packed sequences as sum L_i^2),
and device peaks, for TFLOP/s-per-GPU and MFU.

Per token of a dense GQA SwiGLU decoder (h hidden, f FFN, L layers, q = heads*head_dim,
kv = kv_heads*head_dim, V vocabulary):  6*[L*(3hf + h(q + 2kv) + qh) + hV]  for the matmuls, plus the
causal core attention 6*L*q*s per token of a sequence of length s, i.e. 6*L*q*s^2 per sequence.
(6 = forward + two backward GEMMs, x2 for multiply-add.)
"""

from __future__ import annotations

from collections.abc import Iterable

from tulu_mcore.arch import LlamaArch

# Dense tensor-core peaks in FLOP/s (datasheet values; MFU is stated against these).
PEAK_FLOPS = {
    ("H100 PCIe", "bf16"): 756e12,
    ("H100 NVL", "bf16"): 835e12,
    ("H100", "bf16"): 989e12,
    ("H100", "fp8"): 1979e12,
    ("H200", "bf16"): 989e12,
    ("H200", "fp8"): 1979e12,
    ("A100", "bf16"): 312e12,
}


def matmul_flops_per_token(arch: LlamaArch) -> float:
    h, f, L, V = arch.hidden_size, arch.intermediate_size, arch.num_hidden_layers, arch.vocab_size
    q = arch.num_attention_heads * arch.head_dim
    kv = arch.num_key_value_heads * arch.head_dim
    return 6.0 * (L * (3 * h * f + h * (q + 2 * kv) + q * h) + h * V)


def flops_per_token(arch: LlamaArch, seq_len: int) -> float:
    """Training FLOPs per token for sequences of `seq_len` tokens."""
    q = arch.num_attention_heads * arch.head_dim
    return matmul_flops_per_token(arch) + 6.0 * arch.num_hidden_layers * q * seq_len


def training_flops(arch: LlamaArch, seq_lens: Iterable[int]) -> float:
    """Training FLOPs of one pass over sequences (or packed documents) of the given lengths; padding
    and attention across document boundaries are not credited."""
    lens = list(seq_lens)
    q = arch.num_attention_heads * arch.head_dim
    return matmul_flops_per_token(arch) * sum(lens) + 6.0 * arch.num_hidden_layers * q * sum(n * n for n in lens)


def peak_flops(device_name: str, dtype: str = "bf16") -> float | None:
    """Peak of the named device (torch.cuda.get_device_name()), or None when unknown."""
    for (name, dt), value in PEAK_FLOPS.items():  # specific names first (dict order)
        if name in device_name and dt == dtype:
            return value
    return None
