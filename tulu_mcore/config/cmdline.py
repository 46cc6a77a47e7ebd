"""What a command line may say, checked before Hydra composes it: every GROUP=OPTION names a file of
its group (in the user's --config-dir or in conf/), every KEY=VALUE a key of the schema; a mistake is
one line that names the choices and, when one is close, the one meant."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tulu_mcore.config.schema import RunConfig
from tulu_mcore.errors import ConfigError, UserError

CONFIG_DIR_FLAG = "--config-dir"


@dataclass
class Override:
    line: str  # as typed
    key: str  # the key or group, without + ~ ++ or @package
    value: Any
    group: bool  # GROUP=OPTION (else KEY=VALUE)
    delete: bool = False
    package: str | None = None


def split_config_dirs(overrides) -> tuple[list[Path], list[str]]:
    """(the directories of the `--config-dir=DIR` entries, the other overrides). tulu-train, tulu-launch
    and tulu-plan turn `--config-dir DIR` into one such entry, which travels with the overrides."""
    dirs = [a.split("=", 1)[1] for a in overrides if a.startswith(CONFIG_DIR_FLAG + "=")]
    return checked_dirs(dirs), [a for a in overrides if not a.startswith(CONFIG_DIR_FLAG + "=")]


def checked_dirs(dirs) -> list[Path]:
    out = []
    for d in dirs:
        path = Path(d).expanduser()
        if not path.is_dir():
            raise UserError(f"{CONFIG_DIR_FLAG} {d}: no such directory (it holds GROUP/OPTION.yaml files, "
                            "e.g. experiment/my_run.yaml)")
        out.append(path.resolve())
    return out


def show(d: Path, builtin: Path) -> str:
    return "conf/" if d == builtin else f"{d}/"


def groups(dirs: list[Path]) -> list[str]:
    return sorted({p.name for d in dirs for p in d.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))})


def options(group: str, dirs: list[Path]) -> list[str]:
    """The options of `group`: GROUP/**/*.yaml in any of `dirs`, as `experiment=` names them."""
    found = set()
    for d in dirs:
        root = d / group
        if root.is_dir():
            found |= {p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml")}
    return sorted(found)


def find_option(group: str, option: str, dirs: list[Path]) -> Path | None:
    """The file of `group=option`: the first of `dirs` that has it (Hydra's search order)."""
    for d in dirs:
        path = d / group / f"{option}.yaml"
        if path.is_file():
            return path
    return None


def parse(overrides: list[str], dirs: list[Path]) -> list[Override]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    known_groups = set(groups(dirs))
    out = []
    parser = OverridesParser.create()
    for line in overrides:
        try:
            (o,) = parser.parse_overrides([line])
        except HydraException as e:
            why = "; ".join(s for s in str(e).splitlines()[1:] if s and not s.startswith("See https"))
            raise UserError(f"cannot read {line!r} ({why}): overrides are KEY=VALUE or GROUP=OPTION "
                            "(see --help)") from None
        value = None if o.is_sweep_override() else o.value()
        out.append(Override(line, o.key_or_group, value, o.key_or_group in known_groups, o.is_delete(), o.package))
    return out


def check(overrides: list[Override], dirs: list[Path], builtin: Path) -> None:
    """Every GROUP=OPTION an existing file, every KEY=VALUE a key of the schema: ConfigError otherwise,
    one line per mistake."""
    problems = []
    where = " or ".join(show(d, builtin) for d in dirs)
    for o in overrides:
        if o.group:
            if o.delete or not isinstance(o.value, str) or find_option(o.key, o.value, dirs):
                continue
            choices = options(o.key, dirs)
            near = difflib.get_close_matches(o.value, choices, n=1, cutoff=0.6)
            hint = f"did you mean {o.key}={near[0]}? " if near else ""
            problems.append(f"unknown {o.key}={o.value} (no {o.key}/{o.value}.yaml in {where}): {hint}"
                            f"choose one of {', '.join(choices)}")
        elif not (o.key == "hydra" or o.key.startswith("hydra.")):
            near = difflib.get_close_matches(o.key, groups(dirs), n=1, cutoff=0.75) if "." not in o.key else []
            if near:  # a misspelt group
                problems.append(f"unknown key {o.key}: did you mean {near[0]}={o.value}? (groups: "
                                f"{', '.join(groups(dirs))})")
                continue
            why = unknown_key(o.key)
            if why:
                problems.append(why)
    if problems:
        raise ConfigError(problems)


# ------------------------------------------------------------------ the schema's keys


def _fields(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls)}


def _dataclass_of(tp) -> type | None:
    """The dataclass `tp` is, or is Optional of; None for anything else."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1:
            return _dataclass_of(inner[0])
    return None


def _open(tp) -> bool:
    """Whether keys below a field of type `tp` are free (dicts, lists, Any): the schema says nothing."""
    if tp is Any:
        return True
    origin = typing.get_origin(tp) or tp
    if origin in (typing.Union, types.UnionType):
        return any(_open(a) for a in typing.get_args(tp))
    return origin in (dict, list, tuple)


def schema_keys(cls=RunConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the schema (sections and leaves; not into dicts and lists)."""
    out = []
    for name, tp in _fields(cls).items():
        key = prefix + name
        out.append(key)
        sub = _dataclass_of(tp)
        if sub is not None:
            out += schema_keys(sub, key + ".")
    return out


def unknown_key(key: str) -> str | None:
    """None when the schema has `key` (or it lies inside a dict, list or free field); else the problem,
    with the nearest keys."""
    cls, path = RunConfig, []
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = _fields(cls)
        if part not in fields:
            break
        path.append(part)
        tp = fields[part]
        if i == len(parts) - 1 or _open(tp):
            return None
        cls = _dataclass_of(tp)
        if cls is None:  # a scalar with keys below it
            return f"unknown key {key}: {'.'.join(path)} is a value, not a section"
    return f"unknown key {key}: " + suggest(key, ".".join(path))


def suggest(key: str, known_prefix: str) -> str:
    keys = schema_keys()
    leaf = key.rsplit(".", 1)[-1]
    near = [k for k in keys if k.rsplit(".", 1)[-1] == leaf and k != key]  # the right name, another section
    near = near or difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not near and known_prefix:  # a misspelt name inside a known section
        inside = [k for k in keys if k.startswith(known_prefix + ".") and "." not in k[len(known_prefix) + 1:]]
        near = difflib.get_close_matches(key, inside, n=1, cutoff=0.5)
    if near:
        return f"did you mean {' or '.join(near[:2])}?"
    if known_prefix:
        inside = [k.rsplit(".", 1)[-1] for k in keys
                  if k.startswith(known_prefix + ".") and "." not in k[len(known_prefix) + 1:]]
        return f"{known_prefix} has {', '.join(inside)}"
    return f"the sections are {', '.join(k for k in keys if '.' not in k)}"
