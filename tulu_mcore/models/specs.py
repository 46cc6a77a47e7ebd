"""Layer specs for the Llama decoder as a megatron-core HybridModel (pattern ``"*-" * L``).

* ``te``: megatron-core's ``hybrid_stack_spec`` (Transformer Engine: fused norm+linear, TE attention
  with flash/cuDNN kernels, context parallelism, packed sequences, FP8).
* ``sdpa`` / ``flex``: a local spec from megatron-core's own parallel linears, the project's RMSNorm and
  core attention. It runs anywhere, the CPU included, and supports every parallel mode.

Both specs store the same torch_dist checkpoint keys (the local spec maps its separate norms onto TE's
fused ``layer_norm_weight`` names), so a checkpoint moves freely between them.
"""

from __future__ import annotations

import contextlib
from functools import partial

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.hybrid import hybrid_block
from megatron.core.models.hybrid.hybrid_block import HybridStack, HybridStackSubmodules
from megatron.core.ssm.mlp_layer import MLPLayer
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from tulu_mcore.models.attention import ATTENTION_MODULES
from tulu_mcore.models.norm import RMSNorm


def local_stack_spec(attention: str = "sdpa") -> ModuleSpec:
    core_attention = ATTENTION_MODULES[attention]
    attention_layer = ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=RMSNorm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=ColumnParallelLinear,
                    core_attention=core_attention,
                    linear_proj=RowParallelLinear,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            sharded_state_dict_keys_map={"input_layernorm.": "self_attention.linear_qkv.layer_norm_"},
        ),
    )
    mlp_layer = ModuleSpec(
        module=MLPLayer,
        submodules=TransformerLayerSubmodules(
            pre_mlp_layernorm=RMSNorm,
            mlp=partial(
                MLP.as_mlp_submodule,
                submodules=MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear),
            ),
            mlp_bda=get_bias_dropout_add,
            sharded_state_dict_keys_map={"pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"},
        ),
    )
    return ModuleSpec(
        module=HybridStack,
        submodules=HybridStackSubmodules(attention_layer=attention_layer, mlp_layer=mlp_layer),
    )


def te_stack_spec() -> ModuleSpec:
    from megatron.core.models.hybrid.hybrid_layer_specs import hybrid_stack_spec

    return hybrid_stack_spec


@contextlib.contextmanager
def final_norm_for(attention: str):
    """HybridStack builds its final norm with TENorm directly, not from the spec; swap in ours for
    the local spec while the model is built, and put TE's back afterwards."""
    if attention == "te":
        yield
        return
    original = hybrid_block.TENorm
    hybrid_block.TENorm = RMSNorm
    try:
        yield
    finally:
        hybrid_block.TENorm = original


def stack_spec(attention: str) -> ModuleSpec:
    return te_stack_spec() if attention == "te" else local_stack_spec(attention)
