"""Conversation sources: local JSON Lines / JSON / Parquet files, Hugging Face hub datasets, the
built-in demo data, and mixtures of several with per-source caps.

Every example keeps its origin (``file:line`` for JSON Lines, ``file[#index]`` or ``dataset[#index]``
otherwise), so that bad data is reported where it is. ``on_error="strict"`` stops at the first bad
example with that message; ``"skip"`` drops it and counts it by reason.

Bad rows include what Python's JSON parser would let through or crash on: a line that is not UTF-8, a
lone surrogate escape (``"\\ud800"``), a duplicate key in an object, a number over Python's 4,300-digit
limit, nesting too deep to parse, and rows over :func:`max_row_bytes` (10 MB by default,
``$TULU_DATA_MAX_ROW_MB``). Only regular files are opened (a FIFO or a device would block or never end).
"""

from __future__ import annotations

import json
import os
import random
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tulu_mcore.data.template import ConversationError, check_messages
from tulu_mcore.errors import UserError

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
BUILTIN = {"builtin:sft-demo": BUILTIN_DIR / "sft_demo.jsonl",
           "builtin:preference-demo": BUILTIN_DIR / "preference_demo.jsonl",
           "builtin:rlvr-demo": BUILTIN_DIR / "rlvr_demo.jsonl",
           "builtin:judge-demo": BUILTIN_DIR / "judge_demo.jsonl",  # judge lessons in tulu-synth's short format
           "builtin:rlvr-heldout": BUILTIN_DIR / "rlvr_heldout.jsonl"}  # tulu-demo's held-out prompts
TINY_TOKENIZER = BUILTIN_DIR / "tiny_tokenizer"

# Which rows are accepted: part of every source's fingerprint (so of the tokenized-data cache key and of
# the RLVR data key). Bump when a check is added or changed, so that no cache built under other rules is
# reused.
MAX_ROW_ENV = "TULU_DATA_MAX_ROW_MB"
DEFAULT_MAX_ROW_MB = 10


def max_row_bytes() -> int:
    """The longest row accepted: a JSON Lines line in bytes, or a row's strings in characters (.json,
    Parquet, hub datasets). Longer rows are bad rows; the whole row would be tokenized (about 2 s per MB)
    only to be cut at the length limit. `$TULU_DATA_MAX_ROW_MB` (default 10) raises it."""
    raw = os.environ.get(MAX_ROW_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_MAX_ROW_MB * 1_000_000
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not mb > 0 or mb == float("inf"):
        raise UserError(f"{MAX_ROW_ENV}={raw!r}: expected a positive number of megabytes (default "
                        f"{DEFAULT_MAX_ROW_MB})")
    return int(mb * 1_000_000)


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


_NOT_REGULAR = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def resolve_local(path: str) -> Path | None:
    """The local file of a source (None: not a local path, so a hub dataset). Anything that exists but is
    neither a regular file nor a directory is refused before it is opened: reading a FIFO or a device
    blocks or never ends."""
    if path in BUILTIN:
        return BUILTIN[path]
    if path.startswith("builtin:"):
        raise UserError(f"unknown built-in data {path!r}: choose one of {sorted(BUILTIN)}")
    p = Path(path).expanduser()
    try:
        mode = p.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise UserError(f"{p}: cannot read it ({e.strerror or e})") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = next((name for test, name in _NOT_REGULAR if test(mode)), "a special file")
        raise UserError(f"{p}: {kind}, not a regular file; data is read from .jsonl, .json or .parquet "
                        "files: write the data to a file and give its path")
    return p


def source_fingerprint(spec: SourceSpec) -> dict:
    """What identifies a source's content for the cache key (files: size and modification time)."""
    local = resolve_local(spec.path)
    if local is not None:
        st = local.stat()
        return {"path": str(local.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "max_examples": spec.max_examples, "split": spec.split, **_checks()}
    return {"dataset": spec.path, "split": spec.split, "max_examples": spec.max_examples,
            "fingerprint": _hub_dataset(spec)._fingerprint, **_checks()}


def _checks() -> dict:
    """A raised row limit changes which rows load; the default adds nothing, so that caches and runs
    keyed before the row checks existed stay valid (a resume is not refused after an upgrade)."""
    limit = max_row_bytes()
    return {} if limit == DEFAULT_MAX_ROW_MB * 1_000_000 else {"max_row_bytes": limit}


class Bad:
    """A row that could not be read (it never reaches the row parser): counted under `reason`."""

    __slots__ = ("reason", "message")

    def __init__(self, reason: str, message: str):
        self.reason, self.message = reason, message


class _DuplicateKey(ValueError):
    pass


class _DuplicateKeys(dict):
    """An object that had a duplicate key (in a whole .json file, found per row afterwards)."""

    duplicate: str = ""


def _object_strict(pairs):
    d = dict(pairs)
    if len(d) != len(pairs):
        raise _DuplicateKey(_first_duplicate(pairs))
    return d


def _object_marking(pairs):
    d = dict(pairs)
    if len(d) != len(pairs):
        d = _DuplicateKeys(d)
        d.duplicate = _first_duplicate(pairs)
    return d


def _first_duplicate(pairs) -> str:
    seen: set = set()
    return next(k for k, _ in pairs if k in seen or seen.add(k))


_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # a JSON text that may decode to a lone surrogate


def _json_problem(e: Exception) -> Bad:
    """What json.loads raised, as a bad row."""
    if isinstance(e, _DuplicateKey):
        return Bad("duplicate key", f"an object has the key {str(e)!r} twice (which value is meant?); "
                   "keep one")
    if isinstance(e, json.JSONDecodeError):
        return Bad("invalid JSON", f"not valid JSON ({e.msg} at column {e.colno})")
    if isinstance(e, RecursionError):
        return Bad("invalid JSON", "JSON nested too deeply to parse")
    if "integer string conversion" in str(e):
        return Bad("invalid JSON", "a number with more than 4300 digits (over Python's limit for integers)")
    return Bad("invalid JSON", f"not valid JSON ({e})")


def _scan(row, limit: int) -> Bad | None:
    """Walk a parsed row (no recursion: it may be deep): strings over `limit` characters in all, lone
    surrogates, objects with a duplicate key."""
    total, stack = 0, [row]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v)
            if _SURROGATE.search(v):
                return Bad("invalid text", "a lone UTF-16 surrogate (an escape like \\ud800 without its pair): "
                           "not valid Unicode text")
        elif isinstance(v, dict):
            if isinstance(v, _DuplicateKeys):
                return _json_problem(_DuplicateKey(v.duplicate))
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
        if total > limit:
            return _too_long(f"over {limit:,} characters")
    return None


def _too_long(what: str) -> Bad:
    return Bad("row too long", f"{what} (the limit is ${MAX_ROW_ENV}={max_row_bytes() / 1e6:g} MB; it would be "
               "tokenized whole only to be cut at the length limit): shorten the row, or raise the limit")


def parse_json_line(text: str, limit: int) -> Any:
    """One JSON Lines row, or a :class:`Bad` saying why it cannot be one."""
    try:
        row = json.loads(text, object_pairs_hook=_object_strict)
    except (ValueError, RecursionError) as e:
        return _json_problem(e)
    if _SURROGATE_ESCAPE.search(text):
        return _scan(row, limit) or row
    return row


def _read_jsonl(path: Path, out: list[tuple[str, Any]]) -> None:
    out.extend(iter_jsonl(path))


def iter_jsonl(path: Path):
    """(origin, row) of each non-blank line of a JSON Lines file, streamed; a line that cannot be read
    (too long, not UTF-8, not JSON) is a :class:`Bad`."""
    limit = max_row_bytes()
    with open(path, "rb") as f:
        lineno = 0
        while True:
            raw = f.readline(limit + 1)
            if not raw:
                break
            lineno += 1
            origin = f"{path}:{lineno}"
            if len(raw) > limit and not raw.endswith(b"\n"):  # read no more of it than the limit
                size = len(raw)
                while raw and not raw.endswith(b"\n"):
                    raw = f.readline(1 << 20)
                    size += len(raw)
                yield origin, _too_long(f"a line of {size:,} bytes")
                continue
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield origin, Bad("invalid text", f"not UTF-8 text ({e.reason} at byte {e.start + 1} of the line): "
                                  "save the file as UTF-8")
                continue
            if text.strip():
                yield origin, parse_json_line(text, limit)


def _read_json(path: Path) -> list[tuple[str, Any]]:
    """A whole .json file: an error naming the file when it cannot be parsed at all; rows with lone
    surrogates, duplicate keys or over the size limit are bad rows."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start + 1:,} of the file): save "
                        "it as UTF-8") from None
    hint = "fix the file, or write it as JSON Lines (.jsonl), where a bad row is one bad line"
    try:
        value = json.loads(text, object_pairs_hook=_object_marking)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    except (ValueError, RecursionError) as e:
        raise UserError(f"{path}: cannot parse it: {_json_problem(e).message}; {hint}") from None
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list):
        raise UserError(f"{path}: expected a JSON array of examples (or JSON Lines in a .jsonl file)")
    return [(f"{path}[#{i}]", row) for i, row in enumerate(value)]


def _records(spec: SourceSpec) -> list[tuple[str, Any]]:
    """(origin, row) of every row of a source; a row that could not be read is a :class:`Bad`."""
    local = resolve_local(spec.path)
    if local is not None and local.is_file() and not os.access(local, os.R_OK):
        raise UserError(f"{local}: no permission to read it")
    limit = max_row_bytes()
    if local is None:
        ds = _hub_dataset(spec)
        rows = [(f"{spec.path}[{spec.split}#{i}]", row) for i, row in enumerate(ds)]
    elif local.is_dir():
        raise UserError(f"{local}: a directory; give a .jsonl, .json or .parquet file")
    elif local.suffix.lower() == ".jsonl":
        rows = []
        _read_jsonl(local, rows)
        return rows
    elif local.suffix.lower() == ".json":
        rows = _read_json(local)
    elif local.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(local)
        except Exception as e:  # pyarrow raises several types for damaged files
            raise UserError(f"{local}: cannot read Parquet ({type(e).__name__}: {e})") from None
        rows = [(f"{local}[#{i}]", row) for i, row in enumerate(table.to_pylist())]
    else:
        raise UserError(f"{local}: unknown data format {local.suffix.lower()!r}; use .jsonl, .json or .parquet")
    return [(origin, _scan(row, limit) or row) for origin, row in rows]


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
    their origins; capped sources are subsampled with `seed` (rows that could not be read are always
    reported). `on_error`: strict (stop at the first problem, in file order, with file:line) or skip
    (count by reason). No usable row at all is an error. Returns (items, origins, skipped, rows seen)."""
    if on_error not in ("strict", "skip"):
        raise UserError(f"data.on_error={on_error!r}: choose strict or skip")
    items, origins, skipped, seen = [], [], Counter(), 0
    for spec in specs:
        rows = _records(spec)
        seen += len(rows)  # rows that parsed and lines that did not
        if spec.max_examples is not None:
            good = [i for i, (_, row) in enumerate(rows) if not isinstance(row, Bad)]
            if spec.max_examples < len(good):
                order = list(range(len(good)))
                random.Random(seed).shuffle(order)
                keep = {good[i] for i in order[: spec.max_examples]}
                rows = [r for i, r in enumerate(rows) if i in keep or isinstance(r[1], Bad)]
        for origin, row in rows:
            if isinstance(row, Bad):
                problem = row
            else:
                try:
                    items.append(parse(row))
                    origins.append(origin)
                    continue
                except ConversationError as e:
                    problem = Bad(e.reason, str(e))
                except RecursionError:  # comparing or walking a deeply nested row
                    problem = Bad("invalid JSON", "nested too deeply to process")
            if on_error == "strict":
                raise UserError(f"{origin}: {problem.message} (set data.on_error=skip to drop such {what})")
            skipped[problem.reason] += 1
    if not items:
        names = ", ".join(s.path for s in specs)
        counts = f"{seen:,} read, skipped: {dict(skipped) or 'none'}"
        why = "it is empty" if seen == 0 else "every row is bad (strict mode stops at the first with its line)"
        raise UserError(f"no usable {what} in {names}: {counts}; {why}")
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
