"""Model chunks ready to train: mixed-precision wrapper, megatron DDP, and the (distributed) optimizer."""

from __future__ import annotations

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.transformer.module import Float16Module

from tulu_mcore.config.schema import OptimConfig, PrecisionConfig


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
    return get_megatron_optimizer(
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
    )
