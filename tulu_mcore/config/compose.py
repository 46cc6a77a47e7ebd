"""Compose ``conf/`` with Hydra overrides into a typed :class:`RunConfig`."""

from __future__ import annotations

import copy
from pathlib import Path

from omegaconf import OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from tulu_mcore.arch import LlamaArch, read_json
from tulu_mcore.config import cmdline
from tulu_mcore.config.schema import ModelConfig, RunConfig
from tulu_mcore.errors import ConfigError, UserError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "config",
            config_dirs: list[str | Path] | tuple[str | Path, ...] = ()) -> RunConfig:
    """Compose the root config with `overrides` (Hydra syntax) and check it against the schema.

    `config_dirs` (and `--config-dir=DIR` entries among the overrides, as the CLIs pass them): the
    user's directories of GROUP/OPTION.yaml files, searched in order before the built-in ``conf/``.
    Every GROUP=OPTION must name a file and every KEY=VALUE a key of the schema (one line per mistake,
    with the nearest choice). A group given beside ``experiment=`` wins over the experiment for the
    keys of its own section (``parallel=dp``: the whole layout), and KEY=VALUE overrides win over both.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    given, overrides = cmdline.split_config_dirs(overrides)
    user_dirs = list(dict.fromkeys([*cmdline.checked_dirs(config_dirs), *given]))
    dirs = [*user_dirs, CONF_DIR]  # Hydra's search order
    parsed = cmdline.parse(overrides, dirs)
    cmdline.check(parsed, dirs, CONF_DIR)
    try:
        with initialize_config_dir(str(CONF_DIR), version_base=None):
            if user_dirs:  # before conf/ (Hydra's own hydra.searchpath would only append them after it)
                from hydra.core.config_search_path import SearchPathQuery
                from hydra.core.global_hydra import GlobalHydra

                loader = GlobalHydra.instance().config_loader()
                search = loader.get_search_path()
                for d in user_dirs:
                    search.prepend("tulu --config-dir", f"file://{d}", anchor=SearchPathQuery(provider="main"))
                loader.repository.initialize_sources(search)
            raw = hydra_compose(config_name=config_name, overrides=list(overrides))
            raw = _groups_over_experiment(
                raw, parsed, dirs, lambda group, option: hydra_compose(config_name=None, overrides=[f"+{group}={option}"]))
    except HydraException as e:
        lines = str(e).split("Config search path:")[0].splitlines()
        raise UserError("config: " + " ".join(line.strip() for line in lines if line.strip())) from None
    return to_schema(raw)


def _experiment_choices(path: Path) -> dict[str, str]:
    """The group options an experiment file picks: `- override /precision: bf16` -> {"precision": "bf16"}."""
    out = {}
    for entry in OmegaConf.load(path).get("defaults", None) or []:
        if not isinstance(entry, str):
            for k, v in entry.items():
                group = k.removeprefix("override ").removeprefix("optional ").strip().lstrip("/").split("@")[0]
                out[group] = v
    return out


def _groups_over_experiment(raw, parsed: list[cmdline.Override], dirs: list[Path], group_file):
    """Hydra merges the experiment after the groups, so its `parallel:` keys would beat `parallel=dp`
    typed beside it. Here each GROUP=OPTION of the command line is merged again over the experiment,
    for the keys of its own section, then the user's KEY=VALUE overrides of that section again."""
    exp = [o for o in parsed if o.group and o.key == "experiment" and o.package is None and not o.delete]
    if not exp or not isinstance(exp[-1].value, str):
        return raw
    name = exp[-1].value
    chosen = _experiment_choices(cmdline.find_option("experiment", name, dirs))
    picked = {o.key: o.value for o in parsed if o.group and o.key != "experiment" and o.package is None
              and not o.delete and isinstance(o.value, str)}
    keys = [o for o in parsed if not o.group]

    def said(key: str) -> bool:
        return any(o.key == key or key.startswith(o.key + ".") for o in keys)

    problems = []
    composed = copy.deepcopy(raw)
    OmegaConf.set_struct(composed, False)
    for group, option in picked.items():
        if chosen.get(group) == option:  # the experiment's own choice: nothing to win over
            continue
        if group == "recipe" and "recipe" in chosen:
            same = [e for e in cmdline.options("experiment", dirs)
                    if _experiment_choices(cmdline.find_option("experiment", e, dirs)).get("recipe") == option]
            problems.append(f"recipe={option} does not go with experiment={name}, a recipe={chosen['recipe']} "
                            f"experiment (its data and numbers are {chosen['recipe']}'s): "
                            + (f"choose experiment={' | '.join(same)}, or " if same else "")
                            + "leave out experiment=")
            continue
        section = group_file(group, option).get(group)
        before = composed.get(group)
        if section is None or before is None:
            continue
        merged = OmegaConf.merge(before, section)
        if group == "model":  # the experiment's weights do not fit another model: refuse to drop them silently
            for k in ("init", "tokenizer"):
                if before.get(k) is not None and merged.get(k) != before.get(k) and not said(f"model.{k}"):
                    problems.append(f"model={option} replaces experiment={name}'s model, which starts from "
                                    f"model.{k}={before.get(k)}: name this model's with model.{k}=PATH|HUB_NAME "
                                    f"(model.{k}=null: " + ("random weights)" if k == "init" else "the one of model.init)"))
        with open_dict(raw):
            raw[group] = merged
            for o in keys:  # KEY=VALUE overrides still win
                if o.key == group or o.key.startswith(group + "."):
                    parent, _, leaf = o.key.rpartition(".")
                    node = OmegaConf.select(raw, parent) if parent else raw
                    if o.delete:
                        if node is not None and leaf in node:
                            del node[leaf]
                    else:
                        OmegaConf.update(raw, o.key, OmegaConf.select(composed, o.key), merge=False, force_add=True)
    if problems:
        raise ConfigError(problems)
    return raw


def to_schema(raw) -> RunConfig:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), raw)
        return OmegaConf.to_object(merged)
    except ConfigKeyError as e:  # a key no section has: in a config file (the command line's are checked before)
        key = getattr(e, "full_key", None) or "?"
        why = cmdline.unknown_key(key) if key != "?" else None
        raise UserError(f"config: {why or str(e).splitlines()[0]} (set in a config file: conf/ or "
                        f"{cmdline.CONFIG_DIR_FLAG})") from None
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
