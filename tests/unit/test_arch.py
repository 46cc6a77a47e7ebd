"""LlamaArch from/to config.json (both transformers spellings) and llama3 RoPE frequencies vs transformers."""

import dataclasses

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from tulu_mcore.arch import LlamaArch
from tulu_mcore.config.compose import model_preset
from tulu_mcore.errors import UserError
from tulu_mcore.models.llama.rope import rope_inv_freq


@pytest.mark.parametrize("preset", ["tiny", "llama3_2_1b", "llama3_1_8b", "llama3_1_405b"])
def test_rope_inv_freq_matches_transformers(preset):
    arch = model_preset(preset).arch
    config = LlamaConfig.from_dict(arch.to_hf_config())
    ref, scaling = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    assert scaling == 1.0
    assert torch.equal(rope_inv_freq(arch), ref)


def test_no_rope_scaling_is_plain_rope():
    arch = dataclasses.replace(model_preset("tiny").arch, rope_scaling=None)
    d = arch.head_dim
    expected = 1.0 / (arch.rope_theta ** (torch.arange(0, d, 2).float() / d))
    assert torch.allclose(rope_inv_freq(arch), expected, rtol=0, atol=0)


def test_both_config_spellings_parse_the_same():
    arch = model_preset("llama3_2_1b").arch
    legacy = arch.to_hf_config()  # hub format: rope_theta + rope_scaling
    modern = LlamaConfig.from_dict(legacy).to_dict()  # transformers 5: rope_parameters
    assert LlamaArch.from_hf_config(legacy) == arch
    assert LlamaArch.from_hf_config(modern) == arch


def test_head_dim_and_kv_heads_default_like_transformers():
    cfg = {"model_type": "llama", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 8}
    arch = LlamaArch.from_hf_config(cfg)
    assert arch.head_dim == 8 and arch.num_key_value_heads == 8 and arch.rope_scaling is None


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, "not a Llama checkpoint"),
        ({"architectures": ["LlamaForQuestionAnswering"]}, "not a Llama checkpoint"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope type 'yarn'"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "lacks the field"),
        ({"attention_bias": True}, "attention_bias=true"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"num_key_value_heads": 3}, "not a multiple"),
    ],
)
def test_foreign_configs_are_refused(change, needle):
    cfg = {**model_preset("tiny").arch.to_hf_config(), **change}
    with pytest.raises(UserError, match=needle):
        LlamaArch.from_hf_config(cfg, "x/config.json")


def test_missing_fields_are_named():
    cfg = model_preset("tiny").arch.to_hf_config()
    del cfg["hidden_size"], cfg["vocab_size"]
    with pytest.raises(UserError, match="missing required field.*vocab_size, hidden_size"):
        LlamaArch.from_hf_config(cfg)


def test_resolve_arch_from_preset_dir_or_file(tiny_hf):
    from tulu_mcore.config.compose import resolve_arch

    tiny = model_preset("tiny").arch
    assert resolve_arch("tiny") == tiny
    assert resolve_arch(str(tiny_hf["untied"])) == tiny
    assert resolve_arch(str(tiny_hf["tied"] / "config.json")) == dataclasses.replace(tiny, tie_word_embeddings=True)
    with pytest.raises(UserError, match="no such file"):
        resolve_arch("/nonexistent/model")
    with pytest.raises(UserError, match="unknown model preset"):
        resolve_arch("llama9")
