"""Conversation sources: local JSON Lines / JSON / Parquet files, Hugging Face hub datasets, the
built-in demo data, and mixtures of several with per-source caps.

Every example keeps its origin (``file:line`` for JSON Lines, ``file[#index]`` or ``dataset[#index]``
otherwise), so that bad data is reported where it is. ``on_error="strict"`` stops at the first bad
example with that message; ``"skip"`` drops it and counts it by reason.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tulu_mcore.data.template import ConversationError, check_messages
from tulu_mcore.errors import UserError

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
BUILTIN = {"builtin:sft-demo": BUILTIN_DIR / "sft_demo.jsonl",
           "builtin:preference-demo": BUILTIN_DIR / "preference_demo.jsonl",
           "builtin:rlvr-demo": BUILTIN_DIR / "rlvr_demo.jsonl"}
TINY_TOKENIZER = BUILTIN_DIR / "tiny_tokenizer"


@dataclass(frozen=True)
class SourceSpec:
    path: str  # a file, a hub dataset name, or builtin:<name>
    max_examples: int | None = None  # cap: this many, after a seeded shuffle of the source
    split: str = "train"


def source_specs(train: Any) -> list[SourceSpec]:
    """`data.train` as written in a config: a string, or a list of strings / {path, max_examples, split}."""
    items = train if isinstance(train, (list, tuple)) else [train]
    specs = []
    for item in items:
        if isinstance(item, str):
            specs.append(SourceSpec(item))
        elif isinstance(item, dict) and isinstance(item.get("path"), str):
            unknown = set(item) - {"path", "max_examples", "split"}
            if unknown:
                raise UserError(f"data.train entry {item}: unknown key(s) {sorted(unknown)}")
            specs.append(SourceSpec(item["path"], item.get("max_examples"), item.get("split", "train")))
        else:
            raise UserError(f"data.train entry {item!r}: expected a path / dataset name or {{path: ..., max_examples: N}}")
    if not specs:
        raise UserError("data.train is empty: name at least one data source")
    return specs


@dataclass
class Loaded:
    conversations: list[list[dict]] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    examples_seen: int = 0


def resolve_local(path: str) -> Path | None:
    if path in BUILTIN:
        return BUILTIN[path]
    if path.startswith("builtin:"):
        raise UserError(f"unknown built-in data {path!r}: choose one of {sorted(BUILTIN)}")
    p = Path(path).expanduser()
    return p if p.exists() else None


def source_fingerprint(spec: SourceSpec) -> dict:
    """What identifies a source's content for the cache key (files: size and modification time)."""
    local = resolve_local(spec.path)
    if local is not None:
        st = local.stat()
        return {"path": str(local.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "max_examples": spec.max_examples, "split": spec.split}
    return {"dataset": spec.path, "split": spec.split, "max_examples": spec.max_examples,
            "fingerprint": _hub_dataset(spec)._fingerprint}


Problem = tuple[str, str, str]  # (origin, reason, message)


def _read_jsonl(path: Path, out: list[tuple[str, Any]], problems: list[Problem]) -> None:
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    out.append((f"{path}:{lineno}", json.loads(line)))
                except json.JSONDecodeError as e:
                    problems.append((f"{path}:{lineno}", "invalid JSON",
                                     f"not valid JSON ({e.msg} at column {e.colno})"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _records(spec: SourceSpec, problems: list[Problem]) -> list[tuple[str, Any]]:
    local = resolve_local(spec.path)
    rows: list[tuple[str, Any]] = []
    if local is None:
        ds = _hub_dataset(spec)
        return [(f"{spec.path}[{spec.split}#{i}]", row) for i, row in enumerate(ds)]
    if local.is_dir():
        raise UserError(f"{local}: a directory; give a .jsonl, .json or .parquet file")
    suffix = local.suffix.lower()
    if suffix == ".jsonl":
        _read_jsonl(local, rows, problems)
    elif suffix == ".json":
        try:
            data = json.loads(local.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{local}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise UserError(f"{local}: expected a JSON array of examples (or JSON Lines in a .jsonl file)")
        rows = [(f"{local}[#{i}]", row) for i, row in enumerate(data)]
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(local)
        except Exception as e:  # pyarrow raises several types for damaged files
            raise UserError(f"{local}: cannot read Parquet ({type(e).__name__}: {e})") from None
        rows = [(f"{local}[#{i}]", row) for i, row in enumerate(table.to_pylist())]
    else:
        raise UserError(f"{local}: unknown data format {suffix!r}; use .jsonl, .json or .parquet")
    return rows


def _hub_dataset(spec: SourceSpec):
    import datasets

    try:
        return datasets.load_dataset(spec.path, split=spec.split)
    except Exception as e:  # offline, missing, private: one message, not a traceback
        raise UserError(
            f"data source {spec.path!r} is neither a local file nor a loadable dataset "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None


def load_items(specs: list[SourceSpec], *, on_error: str, seed: int, parse, what: str = "examples"):
    """Every source's rows through `parse` (row -> item, or ConversationError naming the problem), with
    their origins; capped sources are subsampled with `seed`. `on_error`: strict (stop at the first
    problem with file:line) or skip (count by reason). Returns (items, origins, skipped, rows seen)."""
    if on_error not in ("strict", "skip"):
        raise UserError(f"data.on_error={on_error!r}: choose strict or skip")
    items, origins, skipped, seen = [], [], Counter(), 0
    for spec in specs:
        problems: list[Problem] = []
        rows = _records(spec, problems)
        seen += len(rows) + len(problems)  # rows that parsed, lines that did not
        if spec.max_examples is not None and spec.max_examples < len(rows):
            order = list(range(len(rows)))
            random.Random(seed).shuffle(order)
            rows = [rows[i] for i in sorted(order[: spec.max_examples])]
        for origin, row in rows:
            try:
                items.append(parse(row))
                origins.append(origin)
            except ConversationError as e:
                problems.append((origin, e.reason, str(e)))
        for origin, reason, message in problems:
            if on_error == "strict":
                raise UserError(f"{origin}: {message} (set data.on_error=skip to drop such {what})")
            skipped[reason] += 1
    return items, origins, skipped, seen


def _conversation(row) -> list[dict]:
    if not isinstance(row, dict) or "messages" not in row:
        raise ConversationError("no messages field", "no 'messages' field")
    check_messages(row["messages"])
    return row["messages"]


def load_conversations(specs: list[SourceSpec], *, on_error: str, seed: int) -> Loaded:
    """All sources' conversations, validated; capped sources are subsampled with `seed`."""
    items, origins, skipped, seen = load_items(specs, on_error=on_error, seed=seed, parse=_conversation)
    return Loaded(items, origins, skipped, seen)


def env_cache_dir() -> Path:
    return Path(os.environ.get("TULU_CACHE_DIR", Path.home() / ".cache" / "tulu_mcore")) / "tokenized"
