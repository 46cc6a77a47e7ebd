"""Compose ``conf/`` with Hydra overrides into a typed :class:`RunConfig`."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tulu_mcore.arch import LlamaArch, read_json
from tulu_mcore.config.schema import ModelConfig, RunConfig
from tulu_mcore.errors import UserError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "config") -> RunConfig:
    """Compose the root config with `overrides` (Hydra syntax) and check it against the schema."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(str(CONF_DIR), version_base=None):
            raw = hydra_compose(config_name=config_name, overrides=list(overrides))
    except HydraException as e:
        raise UserError(f"config: {e}") from None
    return to_schema(raw)


def to_schema(raw) -> RunConfig:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), raw)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise UserError(f"config: {str(e).splitlines()[0]} (key: {getattr(e, 'full_key', '?')})") from None


def model_preset(name: str) -> ModelConfig:
    """A model from ``conf/model/<name>.yaml``."""
    path = CONF_DIR / "model" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
        raise UserError(f"unknown model preset {name!r}: choose one of {known}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise UserError(f"{path}: {str(e).splitlines()[0]}") from None


def resolve_arch(spec: str) -> LlamaArch:
    """A Llama architecture from a preset name (``conf/model/<name>.yaml``), an HF model directory or
    its ``config.json``."""
    path = Path(spec)
    if path.is_dir():
        return LlamaArch.from_hf_dir(path)
    if path.is_file():
        return LlamaArch.from_hf_config(read_json(path), str(path))
    if "/" in spec or spec.endswith(".json"):
        raise UserError(f"{spec}: no such file or directory (expected a preset name, an HF model directory "
                        "or a config.json)")
    return model_preset(spec).arch


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
