"""The ground floor: what a run is made of before any tensor exists. Torch-free; config, runtime,
models, the planner and the launcher all read it, and it imports nothing of the project but errors.

* :class:`LlamaArch`, the Llama 3.x architecture as Hugging Face's ``config.json`` describes it (also
  the Hydra schema of ``model.arch``): read from a ``config.json`` (transformers 4.x
  ``rope_theta``/``rope_scaling`` or 5.x ``rope_parameters`` spelling) or a preset under
  ``conf/model/``, written back in the Llama-3.1 hub format that every transformers and vLLM release
  reads; its exact parameter count.
* :class:`Layout`, a run's parallel layout (TP, PP, VPP, CP, DP, SP, layers per pipeline segment,
  micro-batches per step), as :func:`tulu_mcore.config.validate.validate` derives it.
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tulu_mcore.errors import UserError

LLAMA_ARCHITECTURES = ("LlamaForCausalLM", "LlamaForSequenceClassification")
# the config names of dtypes (precision.params_dtype) and the names torch and config.json give them
HF_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def hf_dtype_name(dtype: Any) -> str:
    """``bfloat16`` for torch.bfloat16, "bfloat16" or "bf16" (no torch import needed)."""
    name = str(dtype).removeprefix("torch.")
    return HF_DTYPE_NAMES.get(name, name)


@dataclass
class RopeScaling:
    """llama3 RoPE frequency scaling (Llama 3.1: factor 8; Llama 3.2: factor 32)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    rope_type: str = "llama3"


@dataclass
class LlamaArch:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 131072
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: Any = None  # an id or a list of ids, as in config.json

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LlamaArch":
        d = dict(d)
        rs = d.pop("rope_scaling", None)
        if isinstance(rs, dict):
            rs = RopeScaling(**rs)
        return cls(rope_scaling=rs, **d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], source: str = "config.json") -> "LlamaArch":
        """Parse an HF ``config.json`` dict; anything that is not a Llama 3.x decoder is refused."""
        archs = cfg.get("architectures") or []
        if cfg.get("model_type") != "llama" or (archs and not set(archs) & set(LLAMA_ARCHITECTURES)):
            raise UserError(
                f"{source}: not a Llama checkpoint (model_type={cfg.get('model_type')!r}, "
                f"architectures={archs}); tulu_mcore converts LlamaForCausalLM and LlamaForSequenceClassification (reward) models only"
            )
        for key, bad in (("attention_bias", True), ("mlp_bias", True)):
            if cfg.get(key, False) == bad:
                raise UserError(f"{source}: {key}=true is not a Llama 3.x layout and is not supported")
        if cfg.get("hidden_act", "silu") != "silu":
            raise UserError(f"{source}: hidden_act={cfg['hidden_act']!r}; Llama 3.x uses 'silu'")
        missing = [
            k
            for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                      "num_attention_heads")
            if k not in cfg
        ]
        if missing:
            raise UserError(f"{source}: missing required field(s) {', '.join(missing)}")
        # transformers 5 nests rope settings in rope_parameters; 4.x and the hub files use
        # rope_theta + rope_scaling. Where both exist, transformers lets the legacy keys win.
        params = dict(cfg.get("rope_parameters") or {})
        if cfg.get("rope_scaling"):
            params.update(cfg["rope_scaling"])
        theta = cfg.get("rope_theta", params.get("rope_theta", 10000.0))
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type == "default":
            scaling = None
        elif rope_type == "llama3":
            try:
                scaling = RopeScaling(
                    factor=float(params["factor"]),
                    low_freq_factor=float(params["low_freq_factor"]),
                    high_freq_factor=float(params["high_freq_factor"]),
                    original_max_position_embeddings=int(params["original_max_position_embeddings"]),
                )
            except KeyError as e:
                raise UserError(f"{source}: llama3 rope_scaling lacks the field {e.args[0]!r}") from None
        else:
            raise UserError(
                f"{source}: rope type {rope_type!r} is not supported; Llama 3.x uses 'llama3' "
                "(or no scaling)"
            )
        n_heads = int(cfg["num_attention_heads"])
        arch = cls(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=n_heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or n_heads),
            head_dim=int(cfg.get("head_dim") or int(cfg["hidden_size"]) // n_heads),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            rope_theta=float(theta),
            rope_scaling=scaling,
            max_position_embeddings=int(cfg.get("max_position_embeddings", 131072)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_id=cfg.get("eos_token_id"),
        )
        arch.check(source)
        return arch

    @classmethod
    def from_hf_dir(cls, path: str | Path) -> "LlamaArch":
        return cls.from_hf_config(read_json(Path(path) / "config.json"), str(Path(path) / "config.json"))

    def check(self, source: str = "model") -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise UserError(
                f"{source}: num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise UserError(f"{source}: head_dim={self.head_dim} must be even for RoPE")

    # ------------------------------------------------------------------ export
    def to_hf_config(self, dtype: Any = "bfloat16") -> dict[str, Any]:
        """config.json in the Llama-3.1 hub format (legacy rope keys: read by transformers 4 and 5);
        `dtype` a torch dtype, its name (``bfloat16``) or a config name (``bf16``)."""
        rope = None
        if self.rope_scaling is not None:
            rs = self.rope_scaling
            rope = {
                "factor": rs.factor,
                "low_freq_factor": rs.low_freq_factor,
                "high_freq_factor": rs.high_freq_factor,
                "original_max_position_embeddings": rs.original_max_position_embeddings,
                "rope_type": rs.rope_type,
            }
        return {
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "mlp_bias": False,
            "model_type": "llama",
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "pretraining_tp": 1,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": rope,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": hf_dtype_name(dtype),
            "use_cache": True,
            "vocab_size": self.vocab_size,
        }

    # ------------------------------------------------------------------ derived numbers
    @property
    def num_params(self) -> int:
        h, f, v, L = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_hidden_layers
        qkv = h * self.head_dim * (self.num_attention_heads + 2 * self.num_key_value_heads)
        o = self.num_attention_heads * self.head_dim * h
        per_layer = qkv + o + 3 * h * f + 2 * h
        emb = v * h * (1 if self.tie_word_embeddings else 2)
        return L * per_layer + emb + h


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


# ------------------------------------------------------------------------------------------ layout
@dataclass(frozen=True)
class Layout:
    """The parallel layout of a run, with every derived size."""

    world_size: int
    tp: int
    pp: int
    vpp: int
    cp: int
    dp: int
    sp: bool
    segments: tuple[int, ...]  # decoder layers per pipeline segment, segment s = vpp_stage * pp + pp_rank
    num_microbatches: int  # per optimizer step on each data-parallel rank

    @property
    def model_parallel_size(self) -> int:
        return self.tp * self.pp * self.cp


def even_segments(num_layers: int, n_segments: int) -> tuple[int, ...]:
    return tuple([num_layers // n_segments] * n_segments)
