"""Build small random Llama checkpoints in Hugging Face format (the built-in default model, tests)."""

from __future__ import annotations

from pathlib import Path

import torch

from tulu_mcore.arch import LlamaArch


def make_hf_llama(out_dir: str | Path, arch: LlamaArch, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                  init_std: float = 0.02, max_shard_size: str | None = None) -> Path:
    """A randomly initialised ``LlamaForCausalLM`` with `arch`, saved with ``save_pretrained``.

    Norm weights are perturbed away from 1 so that a mix-up between norms cannot go unnoticed; a
    larger `init_std` gives larger logits (stricter parity checks).
    """
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = Path(out_dir)
    config = LlamaConfig.from_dict({**arch.to_hf_config(dtype), "initializer_range": init_std})
    gen = torch.Generator().manual_seed(seed)
    with torch.device("cpu"):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(dtype).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float32).to(dtype))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, safe_serialization=True, **kwargs)
    return out
