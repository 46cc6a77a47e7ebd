"""Kernel choices of the local (non-TE) spec: compiled element-wise functions and varlen attention.

On a GPU, megatron-core's local layers run norms, RoPE and activations as chains of small element-wise
kernels; ``torch.compile`` fuses each chain into one (the numbers stay those of the eager function up
to float rounding). :func:`configure` sets the process-wide choice once, from ``model.kernels``:
``auto`` compiles on CUDA only (compiling on the CPU costs more than it saves), ``compiled`` everywhere,
``eager`` nowhere. Tensors on the CPU always take the eager function under ``auto``.
"""

from __future__ import annotations

import inspect
from functools import lru_cache

import torch

from tulu_mcore.config.schema import KERNEL_MODES

_mode = "auto"


def configure(mode: str) -> None:
    global _mode
    if mode not in KERNEL_MODES:
        raise ValueError(f"model.kernels={mode!r}: expected one of {', '.join(KERNEL_MODES)}")
    _mode = mode


def compiles_on(device: str) -> bool:
    """Whether functions running on `device` ("cuda" / "cpu") are compiled (megatron's fusions too)."""
    return _mode == "compiled" or (_mode == "auto" and device == "cuda")


def use_compiled(x: torch.Tensor) -> bool:
    return compiles_on(x.device.type)


@lru_cache(maxsize=None)
def _compiled(fn):
    # dynamic: packed rows change length every micro-batch; one graph serves them all
    return torch.compile(fn, dynamic=True)


def pick(fn, x: torch.Tensor):
    """`fn` compiled when the configured mode wants it for tensors like `x`, else `fn` itself."""
    return _compiled(fn) if use_compiled(x) else fn


# ------------------------------------------------------------------------------------ varlen attention
@lru_cache(maxsize=1)
def _varlen():
    """PyTorch's own varlen (flash) attention and how this release takes causality and GQA, or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    return varlen_attn, "window_size" in params, "enable_gqa" in params


def varlen_supported(q: torch.Tensor, dropout: float) -> bool:
    """Whether :func:`varlen_causal` can run these queries (CUDA, half precision, no dropout)."""
    return (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and dropout == 0.0
            and q.size(-1) <= 256 and _varlen() is not None)


def varlen_causal(q, k, v, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float | None):
    """Causal attention within each document of a packed row: q [t, hq, d], k/v [t, hkv, d],
    `cu_seqlens` int32 on the device (read by the kernel, never by the host) -> [t, hq, d]."""
    fn, windowed, gqa = _varlen()
    kw = {"scale": scale}
    if windowed:  # releases after 2.9 express causality as the window (-1, 0)
        kw["window_size"] = (-1, 0)
    else:
        kw["is_causal"] = True
    if gqa and k.size(1) != q.size(1):
        kw["enable_gqa"] = True  # flash attention shares K/V heads natively; no copies per query head
    return fn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, **kw)
