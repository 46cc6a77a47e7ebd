"""Where a run's starting weights and tokenizer come from (``model.init``, ``model.tokenizer``).

* an HF directory or hub name (local cache only): its ``config.json`` is the architecture; weights are
  converted on the fly, each rank reading only its slices at the run's layout;
* a megatron checkpoint (``tulu-convert hf-to-mcore`` output), a run directory or a run checkpoint (SFT
  -> DPO -> RLVR): architecture and weights from it, at any layout;
* nothing: the preset's architecture with random weights.

The tokenizer is ``model.tokenizer`` when set, else the one that came with the weights (the HF
directory, or the files a checkpoint carries), else the built-in tiny tokenizer for the tiny preset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tulu_mcore.arch import LlamaArch
from tulu_mcore.config.schema import ModelConfig
from tulu_mcore.errors import UserError


@dataclass
class InitSource:
    kind: str  # "hf" | "mcore" | "none"
    path: Path | None = None
    arch: LlamaArch | None = None
    hf_config: dict | None = None
    tokenizer_dir: Path | None = None


def _has_tokenizer(d: Path) -> bool:
    return (d / "tokenizer.json").is_file() or (d / "tokenizer.model").is_file()


def resolve_init(model: ModelConfig) -> InitSource:
    if not model.init:
        return InitSource("none")
    from tulu_mcore.checkpoint.dist import META_FILE, SIDE_DIR, checkpoint_arch, read_meta
    from tulu_mcore.checkpoint.run import resolve_checkpoint
    from tulu_mcore.hub import resolve_pretrained

    path = resolve_pretrained(model.init, "model.init")
    ckpt = resolve_checkpoint(path)
    if (ckpt / META_FILE).is_file():
        meta = read_meta(ckpt)
        side = ckpt / SIDE_DIR
        return InitSource("mcore", ckpt, checkpoint_arch(meta), meta.get("hf_config"),
                          side if _has_tokenizer(side) else None)
    if (path / "config.json").is_file():
        from tulu_mcore.convert.hf_io import HFCheckpoint

        hf = HFCheckpoint(path)  # validates config, shards and tensor shapes now, on every rank
        return InitSource("hf", path, hf.arch, hf.config, path if _has_tokenizer(path) else None)
    raise UserError(
        f"model.init={model.init}: neither a Hugging Face model directory (config.json) nor a tulu_mcore "
        "checkpoint or run directory"
    )


def tokenizer_path(model: ModelConfig, init: InitSource) -> str:
    from tulu_mcore.data.sources import TINY_TOKENIZER

    if model.tokenizer:
        return model.tokenizer
    if init.tokenizer_dir is not None:
        return str(init.tokenizer_dir)
    if init.kind == "none" and model.name == "tiny":
        return str(TINY_TOKENIZER)
    where = f"model.init={model.init} carries no tokenizer" if model.init else f"model={model.name} has no built-in tokenizer"
    raise UserError(f"no tokenizer: {where}; set model.tokenizer=DIR_OR_HUB_NAME")


def load_init_weights(chunks, init: InitSource, head: str = "lm") -> None:
    """Collective when weights come from a checkpoint. A reward model (`head="score"`) takes the body of
    a language model (its scalar head then keeps its initial weights) or a whole reward model."""
    if init.kind == "hf":
        from tulu_mcore.convert.hf_io import HFCheckpoint
        from tulu_mcore.convert.hf_to_mcore import load_hf_weights

        load_hf_weights(chunks, HFCheckpoint(init.path), head=head)
    elif init.kind == "mcore":
        from tulu_mcore.checkpoint.dist import load_model

        load_model(chunks, init.path)
