"""The reference policy of preference tuning: its per-sequence log-probs, live or from a disk cache.

* ``cache`` (the default): before training, the reference model (the initial policy) runs once,
  forward only, over the whole dataset at the run's layout; each pair's chosen/rejected log-prob sums
  and trained-token counts go to disk. Training then holds no reference model at all (the point for
  70B/405B). The cache is keyed by the tokenized data's key (sources, tokenizer, template, length
  limit, filtering), the reference weights' identity and the dtype they run in, so any later run and
  any parallel layout reuses it; a cache in an explicit directory whose key differs is refused.
* ``live``: a frozen copy of the reference model runs forward on each step's rows beside the policy.

Both hand the loss the same thing: per row, the reference log-prob sum of each of its sequences.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from tulu_mcore.data.cache import TokenizedData, fingerprint
from tulu_mcore.data.loader import pack_units
from tulu_mcore.errors import UserError
from tulu_mcore.runtime.logs import progress
from tulu_mcore.training.sequences import is_cp_rank0, sequence_logps
from tulu_mcore.training.step import packed_forward, run_schedule

CACHE_FORMAT = 1


def logps_forward_step(data_iterator, model):
    """Forward-only step: each sequence's (log-prob sum, trained-token count) of the row."""
    batch = next(data_iterator)
    output, local = packed_forward(batch, model)

    def collect(out):
        logps, counts = sequence_logps(out, local, batch["num_seqs"])
        return out.sum() * 0, torch.tensor(1, device=out.device), {"logps": torch.stack([logps, counts], 1).detach()}

    return output, collect


def row_logps(model, rows, seq_length: int) -> list[torch.Tensor] | None:
    """[num_seqs, 2] (log-prob sum, count) per row, on the ranks that compute losses (the last pipeline
    stage); None elsewhere. Collective over the model's pipeline."""
    from megatron.core import parallel_state as ps

    with torch.no_grad():
        reports = run_schedule(model, [r.as_batch() for r in rows], seq_length=seq_length,
                               forward_step=logps_forward_step, forward_only=True)
    if not ps.is_pipeline_last_stage(ignore_virtual=True):
        return None
    return [rep["logps"].double().cpu() for rep in reports]


# ------------------------------------------------------------------------------------------ identity
def _files_fingerprint(d: Path, patterns: tuple[str, ...]) -> list:
    return sorted([f.name, f.stat().st_size, int(f.stat().st_mtime)] for p in patterns for f in d.glob(p))


def reference_identity(init, seed: int, params_dtype: str, layout) -> dict:
    """What determines the reference's log-probs besides the data: its weights and their dtype."""
    ident: dict = {"dtype": params_dtype}
    if init.kind == "none":
        # random weights are drawn per pipeline stage: the same seed gives other weights at another PP
        ident.update(weights="random", seed=seed, pp=layout.pp, vpp=layout.vpp)
    elif init.kind == "hf":
        ident.update(weights=str(Path(init.path).resolve()),
                     files=_files_fingerprint(Path(init.path), ("config.json", "*.safetensors", "*.json")))
    else:
        ident.update(weights=str(Path(init.path).resolve()),
                     files=_files_fingerprint(Path(init.path), ("tulu_mcore.json", "metadata.json", ".metadata",
                                                                 "*.distcp")))
    return ident


class ReferenceCache:
    """Per pair: [chosen log-prob sum, rejected log-prob sum] and the trained-token counts."""

    def __init__(self, path: Path, logps: np.ndarray, counts: np.ndarray):
        self.path, self.logps, self.counts = path, logps, counts

    @staticmethod
    def key_parts(data: TokenizedData, reference: dict) -> dict:
        return {"format": CACHE_FORMAT, "data": data.key, "reference": reference}

    @staticmethod
    def key_of(parts: dict) -> str:
        return fingerprint(parts)

    @classmethod
    def locate(cls, explicit: str | None, default_root: Path, parts: dict) -> Path:
        """The cache directory; an explicit one holding a cache for other data or another reference is
        refused (which key parts differ is named)."""
        key = cls.key_of(parts)
        if not explicit:
            return Path(default_root) / f"reference-{key}"
        path = Path(explicit)
        meta_file = path / "meta.json"
        if meta_file.is_file():
            meta = json.loads(meta_file.read_text())
            if meta.get("key") != key:
                old = meta.get("parts", {})
                differ = [k for k in ("format", "data", "reference") if old.get(k) != parts.get(k)]
                what = {"data": "the data, tokenizer, template or length limit",
                        "reference": "the reference weights or their dtype", "format": "the cache format"}
                raise UserError(
                    f"{path}: a stale reference log-prob cache, computed for other inputs ("
                    + "; ".join(f"{k} differs: {what[k]}" for k in differ)
                    + "). Delete it, or set dpo.reference_cache to a new directory, to compute it again")
        elif path.exists() and any(path.iterdir()):
            raise UserError(f"{path}: not a reference log-prob cache (no meta.json) and not empty; "
                            "choose another dpo.reference_cache")
        return path

    @classmethod
    def load(cls, path: Path, data: TokenizedData) -> "ReferenceCache":
        logps = np.load(path / "logps.npy", allow_pickle=False)  # plain arrays, never pickles
        counts = np.load(path / "counts.npy", allow_pickle=False)
        expected = np.array([[int(data.example(2 * i + j)[1][1:].sum()) for j in (0, 1)] for i in range(data.units)])
        if logps.shape != (data.units, 2) or not np.array_equal(counts, expected):
            raise UserError(f"{path}: the reference cache does not match the data's pairs (corrupt or "
                            "edited); delete it to compute it again")
        return cls(path, logps, counts)

    def row_refs(self, units: list[int]) -> torch.Tensor:
        """Reference log-prob sums of a row's sequences: chosen, rejected of each unit in order."""
        return torch.from_numpy(self.logps[units].reshape(-1).copy())


def build_cache(model, data: TokenizedData, path: Path, parts: dict, *, pack_options: dict, seq_length: int,
                units_per_pass: int, log=print, show_progress: bool = True) -> None:
    """Run `model` (forward only) over every pair and write the cache to `path` (collective)."""
    from megatron.core import parallel_state as ps

    pack_options = dict(pack_options)
    dp_rank, dp_size = pack_options.pop("dp_rank"), pack_options.pop("dp_size")
    n = data.units
    acc = torch.zeros(n, 4, dtype=torch.float64)
    collects = (ps.is_pipeline_last_stage(ignore_virtual=True) and ps.get_tensor_model_parallel_rank() == 0
                and is_cp_rank0())
    t0 = time.time()
    rank0 = dist.get_rank() == 0
    log(f"reference log-probs: one forward pass over {n:,} pairs -> {path}")
    bar = progress(n, "reference", "pair", enabled=show_progress and rank0)
    for start in range(0, n, units_per_pass):
        mine = list(range(start, min(start + units_per_pass, n)))[dp_rank::dp_size]
        rows = pack_units(data, mine, **pack_options)
        per_row = row_logps(model, rows, seq_length)
        if collects:
            for row, vals in zip(rows, per_row):
                for k, u in enumerate(row.units):
                    acc[u] = torch.stack([vals[2 * k, 0], vals[2 * k + 1, 0], vals[2 * k, 1], vals[2 * k + 1, 1]])
        bar.update(min(start + units_per_pass, n) - start)
    bar.close()
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    acc = acc.to(device)
    dist.all_reduce(acc)
    acc = acc.cpu().numpy()
    if rank0:
        tmp = path.with_name(path.name + f".partial-{int(time.time() * 1e6)}")
        tmp.mkdir(parents=True)
        np.save(tmp / "logps.npy", acc[:, :2])
        np.save(tmp / "counts.npy", np.rint(acc[:, 2:]).astype(np.int64))
        meta = {"key": ReferenceCache.key_of(parts), "parts": parts, "pairs": n,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.time() - t0, 2)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
        log(f"reference log-probs of {n:,} pairs in {time.time() - t0:.1f}s")
    dist.barrier()


class LiveReference:
    """A frozen copy of the initial policy, forward only."""

    def __init__(self, chunks):
        self.model = chunks
        for c in chunks:
            c.eval()
            for p in c.parameters():
                p.requires_grad_(False)

    def row_refs(self, rows, seq_length: int) -> list[torch.Tensor] | None:
        per_row = row_logps(self.model, rows, seq_length)
        return None if per_row is None else [v[:, 0] for v in per_row]
