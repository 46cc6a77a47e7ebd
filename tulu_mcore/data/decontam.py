"""Decontamination with Tülu 3's definition, exact, without a search server.

Units. A training row gives one *training instance* per user turn (its ``messages``, or ``chosen`` of a
preference pair, or its ``prompt``: a string or a list of turns), as open-instruct's index held one
document per user turn; a row is removed when any of its user turns matches. An eval row gives one
*eval instance*: its ``prompt``, ``question`` or ``problem`` field (the first present), else its user
turns joined by newlines.

Tokens. NFKC, lower case, then words: ``\\w+`` runs, joined across an inner apostrophe or dot
(``don't``, ``3.14``); punctuation and spaces are dropped. (Open-instruct matched with Elasticsearch's
standard analyzer, which splits words about the same way.)

Match. An eval instance of L tokens (L >= n) matches a training instance when more than `threshold` of
its L tokens lie inside n-grams of the eval instance that also occur in that *one* training instance
(coverage by a single instance: overlaps split over two instances do not add up). A training source is
contaminated for an eval set when more than `dataset_threshold` of the eval set's instances match one
of its instances; the share of the source's rows that match is reported beside it. Eval instances
shorter than n tokens can never match; they are counted apart.

Algorithm. The eval instances' n-grams are hashed (64-bit, random odd multipliers) into a sorted array
with their (instance, position) postings; training instances stream through it in batches, over
worker processes: windows with a word no eval instance has are skipped, the others looked up, every hit
verified token by token (a hash collision cannot make a match), and the covered positions counted per
(training instance, eval instance).
"""

from __future__ import annotations

import re
import unicodedata
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from tulu_mcore.data.sources import Bad, SourceSpec, _records, iter_jsonl, resolve_local
from tulu_mcore.errors import UserError

WORD = re.compile(r"\w+(?:['’.]\w+)*")
EVAL_FIELDS = ("prompt", "question", "problem")


def words(text: str) -> list[str]:
    return WORD.findall(unicodedata.normalize("NFKC", text).lower())


class NoText(ValueError):
    """A row without the text decontamination reads (the message says which fields it looked for)."""


def _user_turns(messages) -> list[str]:
    if not isinstance(messages, list):
        raise NoText("'messages' is not a list of {role, content} turns")
    turns = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if any(not isinstance(t, str) for t in turns):
        raise NoText("a user turn's content is not text")
    return turns


def train_texts(row) -> list[str]:
    """The user turns of a training row (each one training instance)."""
    if not isinstance(row, dict):
        raise NoText("not a JSON object")
    for key in ("messages", "chosen"):
        # `chosen` is a conversation in the preference-mixture format, a string beside a `prompt` otherwise
        if key in row and (key == "messages" or not isinstance(row[key], str)):
            turns = _user_turns(row[key])
            if turns:
                return turns
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list):
        return _user_turns(prompt)
    raise NoText("no user turn: expected 'messages' (or 'chosen') with a user turn, or a 'prompt'")


def eval_text(row) -> str:
    """An eval row's text: its prompt / question / problem field, else its user turns."""
    if not isinstance(row, dict):
        raise NoText("not a JSON object")
    for key in EVAL_FIELDS:
        if isinstance(row.get(key), str):
            return row[key]
    if "messages" in row:
        turns = _user_turns(row["messages"])
        if turns:
            return "\n".join(turns)
    raise NoText(f"no text: expected a {', '.join(repr(k) for k in EVAL_FIELDS)} field, or 'messages' with a "
                 "user turn")


# ----------------------------------------------------------------------------------------- the index
def _multipliers(n: int, seed: int = 20241121) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(1, 2**63, size=n, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)  # odd


def window_hashes(ids: np.ndarray, n: int, mult: np.ndarray) -> np.ndarray:
    """The hash of each n-token window of `ids` (non-negative int64), wrapping in 64 bits."""
    u = ids.astype(np.uint64)
    count = len(ids) - n + 1
    h = np.zeros(count, dtype=np.uint64)
    for k in range(n):
        h += u[k:k + count] * mult[k]
    return h


@dataclass
class EvalIndex:
    """The eval instances' n-grams: ``keys`` (sorted hashes) with their postings (``inst``, ``pos``);
    ``flat``/``offsets`` hold every instance's token ids, ``lengths`` their lengths."""

    n: int
    vocab: dict[str, int] = field(default_factory=dict)
    lengths: np.ndarray = None  # of each indexed text (an eval instance's field)
    owner_of: np.ndarray = None  # the eval instance of each text
    fields_of: np.ndarray = None  # the number of texts (fields) of each eval instance
    offsets: np.ndarray = None
    flat: np.ndarray = None
    keys: np.ndarray = None
    inst: np.ndarray = None
    pos: np.ndarray = None

    @classmethod
    def build(cls, texts: Iterable[str], n: int, owners: list[int] | None = None) -> "EvalIndex":
        """`texts`: the eval instances' fields; `owners[i]`: the instance text i belongs to (default: each
        text an instance). An instance's score is the mean over its fields (open-instruct's)."""
        index = cls(n)
        mult = _multipliers(n)
        seqs = []
        for text in texts:
            seqs.append(np.fromiter((index.vocab.setdefault(w, len(index.vocab)) for w in words(text)),
                                    dtype=np.int64))
        index.owner_of = np.arange(len(seqs)) if owners is None else np.asarray(owners, dtype=np.int64)
        index.fields_of = np.bincount(index.owner_of) if len(seqs) else np.zeros(0, dtype=np.int64)
        index.lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        index.offsets = np.concatenate([[0], np.cumsum(index.lengths)]).astype(np.int64)
        index.flat = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
        keys, inst, pos = [], [], []
        for i, s in enumerate(seqs):
            if len(s) >= n:
                keys.append(window_hashes(s, n, mult))
                inst.append(np.full(len(s) - n + 1, i, dtype=np.int32))
                pos.append(np.arange(len(s) - n + 1, dtype=np.int32))
        if keys:
            k, i, p = np.concatenate(keys), np.concatenate(inst), np.concatenate(pos)
            order = np.argsort(k, kind="stable")
            index.keys, index.inst, index.pos = k[order], i[order], p[order]
        else:
            index.keys = np.zeros(0, dtype=np.uint64)
            index.inst = index.pos = np.zeros(0, dtype=np.int32)
        return index

    @property
    def scorable(self) -> np.ndarray:
        """Per eval instance: whether any of its fields is n tokens long (else it can never match)."""
        return np.bincount(self.owner_of, weights=self.lengths >= self.n, minlength=len(self.fields_of)) > 0

    def ids(self, text: str) -> np.ndarray:
        """`text`'s words as eval vocabulary ids; -1 for a word no eval instance has."""
        get = self.vocab.get
        return np.fromiter((get(w, -1) for w in words(text)), dtype=np.int64)

    def matches(self, texts: list[str], threshold: float) -> list[tuple[int, int]]:
        """(i, eval instance) for each of `texts` (training instances) and each eval instance it covers
        more than `threshold` of."""
        n = self.n
        seqs = [self.ids(t) for t in texts]
        seqs = [(i, s) for i, s in enumerate(seqs) if len(s) >= n and len(self.keys)]
        if not seqs:
            return []
        sep = np.array([-1], dtype=np.int64)
        starts = np.cumsum([0] + [len(s) + 1 for _, s in seqs[:-1]])
        concat = np.concatenate([x for _, s in seqs for x in (s, sep)])
        owner = np.array([i for i, _ in seqs], dtype=np.int64)
        # windows holding a word unknown to the evals (or a separator) can match nothing
        unknown = np.concatenate([[0], np.cumsum(concat < 0)])
        count = len(concat) - n + 1
        ok = np.flatnonzero(unknown[n:n + count] - unknown[:count] == 0)
        if not len(ok):
            return []
        h = window_hashes(np.where(concat < 0, 0, concat), n, _multipliers(n))[ok]
        lo = np.searchsorted(self.keys, h, "left")
        hi = np.searchsorted(self.keys, h, "right")
        hit = hi > lo
        if not hit.any():
            return []
        windows, lo, hi = ok[hit], lo[hit], hi[hit]
        reps = hi - lo
        w = np.repeat(windows, reps)  # one row per (training window, eval posting)
        post = np.repeat(lo - np.cumsum(np.concatenate([[0], reps[:-1]])), reps) + np.arange(reps.sum())
        inst, pos = self.inst[post].astype(np.int64), self.pos[post].astype(np.int64)
        k = np.arange(n)
        same = (concat[w[:, None] + k] == self.flat[(self.offsets[inst] + pos)[:, None] + k]).all(1)
        w, inst, pos = w[same], inst[same], pos[same]  # hash collisions out
        if not len(w):
            return []
        unit = np.searchsorted(starts, w, "right") - 1
        # covered positions per (training instance, eval text): each hit covers pos..pos+n-1
        longest = int(self.lengths.max()) + 1
        n_text, n_inst = len(self.lengths), len(self.fields_of)
        code = ((unit[:, None] * n_text + inst[:, None]) * longest + pos[:, None] + k).ravel()
        pair, covered = np.unique(np.unique(code) // longest, return_counts=True)
        unit_of, text_of = pair // n_text, pair % n_text
        # an eval instance's score: the covered share of each of its fields, averaged over its fields
        key, at = np.unique(unit_of * n_inst + self.owner_of[text_of], return_inverse=True)
        score = np.bincount(at, weights=covered / self.lengths[text_of]) / self.fields_of[key % n_inst]
        good = score > threshold
        return list(zip(owner[key[good] // n_inst].tolist(), (key[good] % n_inst).tolist()))


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ----------------------------------------------------------------------------------------- sources
def stream_rows(path: str) -> Iterator[tuple[str, object]]:
    """(origin, row) of a data source, streamed for JSON Lines; a row that cannot be read is an error
    naming its file and line."""
    local = resolve_local(path)
    if local is not None and local.is_file() and local.suffix.lower() == ".jsonl":
        rows = iter_jsonl(local)
    else:
        rows = _records(SourceSpec(path))
    for origin, row in rows:
        if isinstance(row, Bad):
            raise UserError(f"{origin}: {row.message}")
        yield origin, row


def write_filtered(path: str, drop: set[int], out_path) -> int:
    """A copy of source `path` without its rows numbered in `drop` (0-based, in reading order), in the
    source's format (JSON Lines byte for byte; a hub dataset as JSON Lines); the rows kept."""
    import json

    local = resolve_local(path)
    kept = 0
    if local is not None and local.suffix.lower() == ".jsonl":
        with open(local, "rb") as f, open(out_path, "wb") as out:
            i = -1
            for raw in f:
                if not raw.strip():
                    continue
                i += 1
                if i not in drop:
                    out.write(raw if raw.endswith(b"\n") else raw + b"\n")
                    kept += 1
        return kept
    if local is not None and local.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(local)
        keep = [i for i in range(table.num_rows) if i not in drop]
        pq.write_table(table.take(keep), out_path)
        return len(keep)
    rows = [row for i, (_, row) in enumerate(stream_rows(path)) if i not in drop]
    with open(out_path, "w", encoding="utf-8") as out:
        if local is not None and local.suffix.lower() == ".json":
            json.dump(rows, out, ensure_ascii=False)
        else:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def copy_name(path: str, taken: set[str]) -> str:
    from pathlib import Path

    local = resolve_local(path)
    name = local.name if local is not None else path.replace("/", "__") + ".jsonl"
    base, k = name, 1
    while name in taken:
        k += 1
        name = f"{Path(base).stem}.{k}{Path(base).suffix}"
    taken.add(name)
    return name


# ----------------------------------------------------------------------------------------- eval sets
@dataclass(frozen=True)
class EvalSet:
    """An eval set: a local file or a dataset of the local Hugging Face cache (`subset`, `split`); its
    instances' `fields` (each scored apart, the scores averaged, as open-instruct did; none: a row's
    prompt / question / problem field, else its user turns); the first `limit` rows."""

    source: str
    subset: str | None = None
    split: str = "test"
    fields: tuple[str, ...] = ()
    limit: int | None = None

    @property
    def name(self) -> str:
        return self.source + (f"/{self.subset}" if self.subset else "")


# open-instruct's decontamination list (decontamination/search.py), the sets Tülu 3 was checked against
TULU3_DEV = (
    EvalSet("cais/mmlu", "all", "test", ("question",)),
    EvalSet("openai/openai_humaneval", None, "test", ("prompt",)),
    EvalSet("openai/gsm8k", "main", "test", ("question",)),
    EvalSet("ucinlp/drop", None, "validation", ("passage", "question")),
    EvalSet("EleutherAI/hendrycks_math", None, "test", ("problem",)),
    EvalSet("google/IFEval", None, "train", ("prompt",)),
    EvalSet("akariasai/PopQA", None, "test", ("subj", "prop", "obj")),
    EvalSet("tatsu-lab/alpaca_eval", None, "eval", ("instruction",)),
    EvalSet("lukaemon/bbh", None, "test", ("input",)),
    EvalSet("truthfulqa/truthful_qa", "generation", "validation", ("question",)),
    EvalSet("allenai/wildguardmix", "wildguardtest", "test", ("prompt",)),
    EvalSet("allenai/wildjailbreak", "eval", "train", ("adversarial",)),
    EvalSet("allenai/tulu-3-trustllm-jailbreaktrigger-eval", None, "test", ("prompt",)),
    EvalSet("allenai/tulu-3-harmbench-eval", None, "test", ("Behavior",)),
    EvalSet("allenai/tulu-3-do-anything-now-eval", None, "test", ("prompt",)),
)
TULU3_UNSEEN = (
    EvalSet("TIGER-Lab/MMLU-Pro", None, "test", ("question",)),
    EvalSet("Idavidrein/gpqa", "gpqa_extended", "train", ("Question",)),
    EvalSet("lighteval/agi_eval_en", None, "train", ("passage", "question")),
    EvalSet("bigcode/bigcodebench", None, "v0.1.2", ("instruct_prompt",)),
    EvalSet("deepmind/math_dataset", None, "test", ("question",), 50),
)
PRESETS = {"tulu3": TULU3_DEV + TULU3_UNSEEN, "tulu3_dev": TULU3_DEV, "tulu3_unseen": TULU3_UNSEEN}


def parse_eval(spec: str) -> list[EvalSet]:
    """``preset:NAME``, or ``SOURCE[,subset=S][,split=S][,fields=a+b][,limit=N]``."""
    if spec.startswith("preset:"):
        name = spec.removeprefix("preset:")
        if name not in PRESETS:
            raise UserError(f"--eval {spec}: unknown preset; choose one of {', '.join(f'preset:{p}' for p in PRESETS)}")
        return list(PRESETS[name])
    source, *options = spec.split(",")
    kw = {}
    for opt in options:
        key, eq, value = opt.partition("=")
        if not eq or key not in ("subset", "split", "fields", "limit"):
            raise UserError(f"--eval {spec}: {opt!r} is not subset=, split=, fields= or limit=")
        kw[key] = value
    try:
        limit = int(kw["limit"]) if "limit" in kw else None
        if limit is not None and limit < 1:
            raise ValueError
    except ValueError:
        raise UserError(f"--eval {spec}: limit must be a whole number >= 1") from None
    fields = tuple(f for f in kw.get("fields", "").split("+") if f)
    return [EvalSet(source, kw.get("subset"), kw.get("split", "test"), fields, limit)]


def eval_rows(es: EvalSet) -> Iterator[tuple[str, object]]:
    """(origin, row) of an eval set: a local file's rows, or the cached dataset's (every subset when it has
    several and none is named, as open-instruct read them), the first `limit` of each."""
    local = resolve_local(es.source)
    if local is not None:
        for i, item in enumerate(stream_rows(es.source)):
            if es.limit is not None and i >= es.limit:
                return
            yield item
        return
    import datasets

    def load(subset):
        return datasets.load_dataset(es.source, subset, split=es.split)

    try:
        try:
            parts = [(es.subset, load(es.subset))]
        except ValueError:  # several subsets and none named: all of them
            if es.subset is not None:
                raise
            parts = [(sub, load(sub)) for sub in datasets.get_dataset_config_names(es.source)]
    except Exception as e:  # offline, missing, gated: one message
        raise UserError(f"eval set {es.name}: neither a local file nor a dataset in the local Hugging Face cache "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    for subset, ds in parts:
        n = len(ds) if es.limit is None else min(es.limit, len(ds))
        for i in range(n):
            yield f"{es.source}{'/' + subset if subset else ''}[{es.split}#{i}]", ds[i]


def instance_fields(row, fields: tuple[str, ...], origin: str) -> list[str] | None:
    """The texts of an eval instance (None when one of its `fields` is null)."""
    if not fields:
        try:
            return [eval_text(row)]
        except NoText as err:
            raise UserError(f"{origin}: {err}") from None
    if not isinstance(row, dict):
        raise UserError(f"{origin}: not a JSON object")
    missing = [f for f in fields if f not in row]
    if missing:
        raise UserError(f"{origin}: no field {', '.join(repr(f) for f in missing)} (fields={'+'.join(fields)})")
    values = [row[f] for f in fields]
    if any(v is None for v in values):
        return None
    bad = [f for f, v in zip(fields, values) if not isinstance(v, str)]
    if bad:
        raise UserError(f"{origin}: field {bad[0]!r} is not text")
    return values


# ----------------------------------------------------------------------------------------- the run
_INDEX: EvalIndex | None = None  # the workers' (inherited at fork)
_THRESHOLD = 0.5


def _scan(texts: list[str]) -> list[tuple[int, int]]:
    return _INDEX.matches(texts, _THRESHOLD)


@dataclass
class Report:
    rows: list[dict]
    filtered: dict[str, dict]
    settings: dict


def decontaminate(train: list[str], evals: list[str], out_dir, *, n: int = 8, threshold: float = 0.5,
                  dataset_threshold: float = 0.02, workers: int = 1, batch: int = 4096, log=print) -> Report:
    """Every training source against every eval set; `out_dir` gets report.json, report.md and a filtered
    copy of each training source."""
    import json
    import multiprocessing
    import time
    from pathlib import Path

    global _INDEX, _THRESHOLD
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sets = [e for spec in evals for e in parse_eval(spec)]
    evals = [e.name for e in sets]
    texts, owners, inst_set, skipped = [], [], [], [0] * len(sets)
    for e, es in enumerate(sets):
        before = len(inst_set)
        for origin, row in eval_rows(es):
            fields = instance_fields(row, es.fields, origin)
            if fields is None:  # a field is null: the release leaves such an instance out
                skipped[e] += 1
                continue
            texts += fields
            owners += [len(inst_set)] * len(fields)
            inst_set.append(e)
        if len(inst_set) == before:
            raise UserError(f"{es.name}: no eval instances")
    index = EvalIndex.build(texts, n, owners)
    inst_set = np.array(inst_set, dtype=np.int64)
    del texts, owners
    log(f"decontam: {len(inst_set):,} eval instances in {len(evals)} set(s), {len(index.keys):,} {n}-grams "
        f"indexed in {time.time() - t0:.1f} s")
    _INDEX, _THRESHOLD = index, threshold
    n_sets = len(evals)
    matched_inst = [np.zeros(len(inst_set), dtype=bool) for _ in train]
    matched_rows: list[list[dict[int, str]]] = [[{} for _ in evals] for _ in train]
    row_counts = [0] * len(train)

    def units():
        for s, path in enumerate(train):
            for r, (origin, row) in enumerate(stream_rows(path)):
                try:
                    turns = train_texts(row)
                except NoText as err:
                    raise UserError(f"{origin}: {err}") from None
                row_counts[s] = r + 1
                for text in turns:
                    yield (s, r, origin), text

    ctx = multiprocessing.get_context("fork")
    pool = ctx.Pool(workers) if workers > 1 else None
    seen, last = 0, time.time()

    def take(keys, found) -> None:
        nonlocal seen, last
        seen += len(keys)
        for u, i in found:
            s, r, origin = keys[u]
            matched_inst[s][i] = True
            matched_rows[s][inst_set[i]][r] = origin
        if time.time() - last > 30:
            last = time.time()
            log(f"decontam: {seen:,} training instances scanned ({seen / (last - t0):,.0f}/s)")

    try:
        pending: deque = deque()  # at most two batches per worker in flight: memory stays bounded
        for b in batched(units(), batch):
            keys, texts = [k for k, _ in b], [t for _, t in b]
            if pool is None:
                take(keys, _scan(texts))
                continue
            pending.append((keys, pool.apply_async(_scan, (texts,))))
            while len(pending) > 2 * workers:
                keys, job = pending.popleft()
                take(keys, job.get())
        while pending:
            keys, job = pending.popleft()
            take(keys, job.get())
    finally:
        if pool:
            pool.close()
            pool.join()
    scorable = index.scorable
    rows = []
    for s, tpath in enumerate(train):
        for e, epath in enumerate(evals):
            in_set = inst_set == e
            total, hit = int(in_set.sum()), int((matched_inst[s] & in_set).sum())
            frac = hit / total if total else 0.0
            bad_rows = matched_rows[s][e]
            rows.append({"train": tpath, "eval": epath, "eval_instances": total,
                         "scorable_eval_instances": int((scorable & in_set).sum()),
                         "skipped_eval_instances": skipped[e],
                         "matched_eval_instances": hit, "matched_fraction": frac,
                         "contaminated": frac > dataset_threshold, "train_instances": row_counts[s],
                         "matched_train_instances": len(bad_rows),
                         "train_fraction": len(bad_rows) / row_counts[s] if row_counts[s] else 0.0,
                         "matched_train": [bad_rows[r] for r in sorted(bad_rows)]})
    filtered, taken = {}, set()
    for s, tpath in enumerate(train):
        drop = set().union(*(matched_rows[s][e].keys() for e in range(n_sets)))
        name = copy_name(tpath, taken)
        kept = write_filtered(tpath, drop, out / name)
        filtered[tpath] = {"path": str(out / name), "rows": row_counts[s], "removed": len(drop), "kept": kept}
    settings = {"ngram": n, "threshold": threshold, "dataset_threshold": dataset_threshold,
                "tokens": "NFKC, lower case, words (\\w+ joined across inner ' or .)",
                "seconds": round(time.time() - t0, 1)}
    report = Report(rows, filtered, settings)
    (out / "report.json").write_text(json.dumps({**settings, "rows": rows, "filtered": filtered}, indent=2,
                                                ensure_ascii=False) + "\n")
    (out / "report.md").write_text(markdown(report))
    return report


def markdown(report: Report) -> str:
    s = report.settings
    lines = [f"# Decontamination ({s['ngram']}-grams; an eval instance matches when > {s['threshold']:.0%} of its "
             f"tokens are covered by one training instance; a source is contaminated above "
             f"{s['dataset_threshold']:.0%} of an eval set)", "",
             "| train | eval | eval instances | matched | matched % | contaminated | train rows matched | train % |",
             "|---|---|---:|---:|---:|:---:|---:|---:|"]
    for r in report.rows:
        lines.append(f"| {r['train']} | {r['eval']} | {r['eval_instances']:,} | {r['matched_eval_instances']:,} | "
                     f"{100 * r['matched_fraction']:.2f} | {'yes' if r['contaminated'] else 'no'} | "
                     f"{r['matched_train_instances']:,} | {100 * r['train_fraction']:.2f} |")
    lines += ["", "| train | filtered copy | rows | removed |", "|---|---|---:|---:|"]
    for t, f in report.filtered.items():
        lines.append(f"| {t} | {f['path']} | {f['rows']:,} | {f['removed']:,} |")
    return "\n".join(lines) + "\n"
