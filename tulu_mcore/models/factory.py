"""The model factory: a Llama 3.x architecture at a parallel layout -> megatron-core HybridModel chunks.

A Llama decoder layer is two HybridModel layers (``*`` attention, ``-`` MLP), so L layers are the
pattern ``"*-" * L``; ``|`` separates pipeline segments (one per pipeline stage and virtual stage).
One chunk is built per virtual pipeline stage this rank holds.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from megatron.core import parallel_state as ps
from megatron.core.models.hybrid.hybrid_model import HybridModel
from megatron.core.transformer.transformer_config import TransformerConfig

from tulu_mcore.arch import Layout, LlamaArch
from tulu_mcore.config.schema import PrecisionConfig
from tulu_mcore.config.validate import have_transformer_engine
from tulu_mcore.dtypes import TORCH_DTYPES
from tulu_mcore.errors import ConfigError
from tulu_mcore.models import kernels as kernel_choice
from tulu_mcore.models import packed_rope
from tulu_mcore.models.heads import attach_score_head
from tulu_mcore.models.llama.rope import rope_inv_freq
from tulu_mcore.models.specs import final_norm_for, stack_spec


def resolve_attention(requested: str, device: str) -> str:
    if requested == "auto":
        return "te" if device == "cuda" and have_transformer_engine() else "sdpa"
    return requested


def hybrid_pattern(segments: tuple[int, ...]) -> str:
    return "|".join("*-" * n for n in segments)


def segments_of(model) -> list[int]:
    """Decoder layers per pipeline segment of a built chunk (from its hybrid layer pattern)."""
    return [len(seg) // 2 for seg in unwrap(model).hybrid_layer_pattern.split("|")]


def transformer_config(
    arch: LlamaArch,
    layout: Layout,
    precision: PrecisionConfig,
    *,
    device: str,
    attention: str,
    init: bool = True,
    overrides: dict[str, Any] | None = None,
) -> TransformerConfig:
    dtype = TORCH_DTYPES[precision.params_dtype]
    te = attention == "te"
    # megatron-core accepts fp8 on the local spec and silently computes in bf16: refuse instead
    if precision.fp8 is not None and not te:
        raise ConfigError(
            f"precision.fp8={precision.fp8} runs only in Transformer Engine layers, but the model uses "
            f"the local spec (attention={attention}): install Transformer Engine and use attention=te"
        )
    if te and not have_transformer_engine():
        raise ConfigError("attention=te needs Transformer Engine, which is not installed")
    on_gpu = device == "cuda"
    fuse = kernel_choice.compiles_on(device)
    if not te:
        packed_rope.install()  # RoPE through the fusion hooks: no host syncs on packed rows
    kw: dict[str, Any] = dict(
        # shape
        num_layers=2 * arch.num_hidden_layers,  # HybridModel: attention and MLP are separate layers
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.intermediate_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_key_value_heads,
        kv_channels=arch.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=arch.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=0.02,
        rotary_interleaved=False,  # HF Llama uses rotate-half
        # parallel layout
        tensor_model_parallel_size=layout.tp,
        pipeline_model_parallel_size=layout.pp,
        virtual_pipeline_model_parallel_size=layout.vpp if layout.vpp > 1 else None,
        context_parallel_size=layout.cp,
        sequence_parallel=layout.sp,
        cp_comm_type="p2p" if (te and layout.cp > 1) else None,
        # PP=2 with interleaving pairs same-peer p2p ops in FIFO order under batched p2p, crossing an
        # activation with a gradient of the same shape (silent corruption seen on gloo).
        batch_p2p_comm=layout.vpp == 1,
        # precision
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        # init: on CPU draw full master weights and slice them, so weights do not depend on TP
        perform_initialization=init,
        use_cpu_initialization=not on_gpu,
        transformer_impl="transformer_engine" if te else "local",
        # fusions (model.kernels; by default on GPUs only): megatron's torch.compile'd SwiGLU,
        # dropout-add and cross entropy; TE kernels only with TE. RoPE always goes through the fusion
        # hook: TE's kernel, or the project's sync-free one (tulu_mcore.models.packed_rope).
        bias_activation_fusion=fuse,
        bias_dropout_fusion=fuse,
        apply_rope_fusion=True,
        # megatron's native fused cross entropy returns bf16 logit gradients whatever the dtype: on for
        # bf16 weights only (where the unfused one's gradients are cast to bf16 too). TE's checks its
        # labels with torch.equal (a host sync): not used.
        cross_entropy_loss_fusion=fuse and dtype == torch.bfloat16,
        cross_entropy_fusion_impl="native",
        persist_layer_norm=False,
        masked_softmax_fusion=False,
        gradient_accumulation_fusion=False,
    )
    if precision.fp8 is not None:
        kw.update(
            fp8=precision.fp8,
            fp8_recipe=precision.fp8_recipe,
            fp8_param=precision.fp8_param,
            first_last_layers_bf16=precision.first_last_layers_bf16,
            # counts are in Llama layers; HybridModel counts attention and MLP separately
            num_layers_at_start_in_bf16=2 * precision.num_layers_at_start_in_bf16,
            num_layers_at_end_in_bf16=2 * precision.num_layers_at_end_in_bf16,
        )
    kw.update(overrides or {})
    return TransformerConfig(**kw)


def build_model(
    arch: LlamaArch,
    layout: Layout,
    precision: PrecisionConfig,
    *,
    device: str,
    attention: str = "auto",
    init: bool = True,
    head: str = "lm",
    config_overrides: dict[str, Any] | None = None,
    kernels: str | None = None,
) -> list[HybridModel]:
    """Build this rank's model chunks (one per virtual pipeline stage).

    `init=False` skips weight initialisation (the weights are about to be loaded). `head="score"`
    builds a reward model: a scalar head instead of the output layer (never tied to the embedding).
    `kernels` (model.kernels) sets where the local spec's element-wise functions are compiled
    (tulu_mcore.models.kernels; None keeps the process's choice).
    Megatron parallel state must be initialised for `layout` first (tulu_mcore.runtime).
    """
    if kernels is not None:
        kernel_choice.configure(kernels)
    attention = resolve_attention(attention, device)
    config = transformer_config(
        arch, layout, precision, device=device, attention=attention, init=init,
        overrides=config_overrides,
    )
    spec = stack_spec(attention)
    pattern = hybrid_pattern(layout.segments)
    inv_freq = rope_inv_freq(arch)
    chunks = []
    for vp in range(layout.vpp):
        vp_stage = vp if layout.vpp > 1 else None
        with final_norm_for(attention):
            model = HybridModel(
                config,
                spec,
                vocab_size=arch.vocab_size,
                max_sequence_length=arch.max_position_embeddings,
                hybrid_layer_pattern=pattern,
                pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
                post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
                share_embeddings_and_output_weights=arch.tie_word_embeddings and head == "lm",
                position_embedding_type="rope",
                rotary_base=arch.rope_theta,
                vp_stage=vp_stage,
            )
        # HybridModel has no llama3 RoPE scaling: set the frequencies before the first forward
        # (RotaryEmbedding.forward is lru_cached).
        model.rotary_pos_emb.inv_freq = inv_freq.to(model.rotary_pos_emb.inv_freq.device)
        if head == "score":
            attach_score_head(model)
        elif head != "lm":
            raise ValueError(f"unknown model head {head!r}")
        if device == "cuda":
            model.cuda(torch.cuda.current_device())
        chunks.append(model)
    return chunks


def unwrap(chunk) -> HybridModel:
    """The HybridModel inside DDP / Float16Module wrappers."""
    while not isinstance(chunk, HybridModel):
        chunk = chunk.module
    return chunk
