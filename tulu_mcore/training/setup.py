"""Model chunks ready to train: mixed-precision wrapper, megatron DDP, and the (distributed) optimizer."""

from __future__ import annotations

import torch
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.transformer.module import Float16Module

from tulu_mcore.config.schema import ADAM_IMPLS, OptimConfig, PrecisionConfig
from tulu_mcore.errors import ConfigError


def wrap_for_training(chunks, precision: PrecisionConfig, optim: OptimConfig) -> list[DistributedDataParallel]:
    """Wrap each chunk in megatron's DDP (one contiguous gradient buffer, reduced over DP x CP)."""
    config = chunks[0].config
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=precision.grad_reduce_in_fp32,
        overlap_grad_reduce=False,
        use_distributed_optimizer=optim.distributed,
    )
    wrapped = []
    for i, chunk in enumerate(chunks):
        if config.bf16 or config.fp16:
            chunk = Float16Module(config, chunk)  # fp32 in/out at the pipeline ends
        # Only the first chunk's grads use buckets: later VPP chunks' grads finish first.
        wrapped.append(DistributedDataParallel(config, ddp_config, chunk, disable_bucketing=i > 0))
    # Without this the schedules skip DP grad reduction, the TP all-reduce of sequence-parallel norm
    # grads and the embedding/output sync of tied weights across pipeline stages.
    config.finalize_model_grads_func = finalize_model_grads
    return wrapped


def build_optimizer(model, precision: PrecisionConfig, optim: OptimConfig):
    config = model[0].config
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",  # AdamW: decoupled weight decay
            lr=optim.lr,
            min_lr=0.0,
            weight_decay=optim.weight_decay,
            adam_beta1=optim.adam_beta1,
            adam_beta2=optim.adam_beta2,
            adam_eps=optim.adam_eps,
            clip_grad=optim.clip_grad,
            use_distributed_optimizer=optim.distributed,
            bf16=config.bf16,
            fp16=config.fp16,
            params_dtype=config.params_dtype,
            main_params_dtype=torch.float32,
        ),
        model,
        # {}: decay every parameter, as torch.optim.AdamW(model.parameters()); None: megatron's
        # defaults (no decay on norms and biases)
        config_overrides={} if optim.decay_norms_and_biases else None,
    )
    set_adam_impl(optimizer, optim.impl, "cuda" if next(model[0].parameters()).is_cuda else "cpu")
    return optimizer


def inner_optimizers(optimizer) -> list:
    """The torch optimizers inside megatron's (chained, distributed, mixed-precision) wrappers."""
    if hasattr(optimizer, "chained_optimizers"):
        return [o for c in optimizer.chained_optimizers for o in inner_optimizers(c)]
    return [optimizer.optimizer]


def set_adam_impl(optimizer, impl: str, device: str) -> None:
    """optim.impl: how torch's AdamW steps (megatron takes it when neither Transformer Engine nor
    Apex provides a fused Adam). `auto`: one fused kernel on CUDA (the foreach loop over tensors is
    torch's own default there), the plain loop on the CPU; `fused`, `foreach`, `for_loop` force one.
    Every variant computes the same update up to float rounding. TE's FusedAdam is always fused."""
    if impl not in ADAM_IMPLS:
        raise ConfigError(f"optim.impl={impl!r} is not one of {list(ADAM_IMPLS)}")
    for inner in inner_optimizers(optimizer):
        if not isinstance(inner, torch.optim.AdamW):  # TE's / Apex's FusedAdam
            if impl in ("foreach", "for_loop"):
                raise ConfigError(f"optim.impl={impl}: the optimizer is {type(inner).__module__}."
                                  f"{type(inner).__name__}, always fused; use optim.impl=auto")
            continue
        chosen = ("fused" if device == "cuda" else "for_loop") if impl == "auto" else impl
        for group in inner.param_groups:  # read at every step, so setting them after construction holds
            group["fused"], group["foreach"] = chosen == "fused", chosen == "foreach"


def build_scheduler(optimizer, optim: OptimConfig, total_steps: int):
    """Linear warmup from 0 over `warmup_ratio` of the steps, then linear / cosine decay to min_lr
    at `total_steps` (or constant). The LR a step uses is the schedule's value at its index, as in
    transformers' schedulers: with warmup the first update has LR 0.

    On resume only the step count comes from the checkpoint: the schedule follows the current config,
    so a finished run can be extended with a larger train.max_steps."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    warmup = int(optim.warmup_ratio * total_steps)  # open-instruct rounds down
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=optim.lr,
        min_lr=optim.min_lr,
        lr_warmup_steps=warmup,
        lr_decay_steps=max(total_steps, warmup + 1),
        lr_decay_style=optim.lr_schedule,
        start_wd=optim.weight_decay,
        end_wd=optim.weight_decay,
        wd_incr_steps=max(total_steps, 1),
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=False,
        override_opt_param_scheduler=True,
    )


def recompute_overrides(recompute: str) -> dict:
    """TransformerConfig fields for train.recompute."""
    if recompute == "selective":  # core attention: the activations that grow with sequence length
        return {"recompute_granularity": "selective", "recompute_modules": ["core_attn"]}
    if recompute == "full":  # every layer's input only; the rest recomputed in backward
        return {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}
    return {}


def current_lr(optimizer) -> float:
    from megatron.core.optimizer_param_scheduler import get_canonical_lr_for_logging

    lr = get_canonical_lr_for_logging(optimizer.param_groups)
    return float(lr if lr is not None else optimizer.param_groups[0]["lr"])
