"""Text in, text out over the rollout engines: chat prompts rendered with the Tülu template, n sampled
completions each, with whether each ended (EOS) within its length limit.

* ``vllm``: an engine server out of process on an HF directory's weights (a run directory: its ``hf/``
  export);
* ``megatron``: the in-process megatron engine on weights from an HF directory, a ``tulu-convert``
  checkpoint or a run directory (the on-policy SFT checkpoint needs no conversion). In a launch of
  several ranks each rank holds the whole model and generates its own shards (parallel.tp=1).

Engines are opened once per model and reused (the policy and the judge may be one model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tulu_mcore.data.rlvr import prompt_text
from tulu_mcore.errors import UserError


@dataclass
class Completion:
    text: str
    finished: bool  # EOS within the limit; False: cut at the length limit
    tokens: int


class TextGenerator:
    def __init__(self, engine, tokenizer, *, max_len: int, label: str, close=None):
        self.engine, self.tokenizer, self.max_len, self.label = engine, tokenizer, max_len, label
        self._close = close

    def chat(self, conversations: list[list[dict]], *, n: int, max_new_tokens: int, temperature: float,
             seed: int) -> list[list[Completion] | None]:
        """n completions of each conversation (ending in a user turn); None for a prompt that leaves no
        room to answer within the engine's max_model_len. Sampling is seeded per prompt: the same
        prompts with the same `seed` give the same completions."""
        eos = self.tokenizer.eos_token
        ids = self.tokenizer([prompt_text(c, eos) for c in conversations], add_special_tokens=False)["input_ids"]
        out: list = [None] * len(conversations)
        fits = [i for i, x in enumerate(ids) if len(x) < self.max_len]
        by_room: dict[int, list[int]] = {}
        for i in fits:  # one engine call per length limit (a long prompt gets fewer new tokens)
            by_room.setdefault(min(max_new_tokens, self.max_len - len(ids[i])), []).append(i)
        for room, idx in sorted(by_room.items()):
            groups = self.engine.generate([np.asarray(ids[i], dtype=np.int64) for i in idx], n=n,
                                          max_new_tokens=room, temperature=temperature, seed=seed * 7919 + room)
            for i, group in zip(idx, groups):
                out[i] = [Completion(self.tokenizer.decode([t for t in r.response if t != self.tokenizer.eos_token_id]),
                                     bool(r.finished), len(r.response)) for r in group]
        return out

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None


def hf_dir_of(path: str) -> Path:
    """The HF directory for an engine that loads HF weights: the directory itself, or a run's export."""
    from tulu_mcore.hub import resolve_pretrained

    p = resolve_pretrained(path, "model")
    for d in (p, p / "hf"):
        if (d / "config.json").is_file():
            return d
    raise UserError(f"{path}: no Hugging Face model here (config.json), nor a run's hf/ export: the vLLM engine "
                    "serves HF weights (convert a checkpoint with tulu-convert mcore-to-hf, or use engine.kind=megatron)")


class Engines:
    """The open engines of one verb, by model path; `open(path)` reuses one already open."""

    def __init__(self, opts, work_dir: Path, *, seed: int, task: int = 0, log=print):
        self.opts, self.work_dir, self.seed, self.task, self.log = opts, Path(work_dir), seed, task, log
        self.open_: dict[str, TextGenerator] = {}
        # megatron in a launch of several ranks (torchrun, srun): loading a checkpoint is collective, so
        # every rank opens each model, whether or not shards of its own are left
        self.collective = opts.kind == "megatron" and _world_size() > 1

    def needed(self, stage) -> bool:
        """Whether this task opens the stage's model: it has shards left, or opening is collective."""
        return bool(stage.pending()) or self.collective

    def open(self, path: str, label: str) -> TextGenerator:
        """The model at `path` on the engine; one already open for the same weights is reused (a run
        directory and its hf/ export are the same weights for vLLM)."""
        from tulu_mcore.hub import resolve_pretrained

        key = str(hf_dir_of(path) if self.opts.kind == "vllm" else resolve_pretrained(path, "model").resolve())
        if key not in self.open_:
            self.close_all()  # one model in memory at a time
            self.log(f"opening {label} ({path}) on the {self.opts.kind} engine")
            make = _megatron if self.opts.kind == "megatron" else _vllm
            # each task's engine keeps its own log and ready file
            where = self.work_dir / "engines" / label / f"task-{self.task}"
            self.open_[key] = make(path, self.opts, self.seed, where, label)
        return self.open_[key]

    def close_all(self) -> None:
        for g in self.open_.values():
            g.close()
        self.open_.clear()


def _world_size() -> int:
    from tulu_mcore.runtime.distributed import detect_env

    return detect_env().world_size


def run_config(opts, seed: int, extra: list[str] = ()):
    """The RunConfig that carries the engine options (device, precision, vLLM settings)."""
    from tulu_mcore.config.compose import compose

    device = opts.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = opts.precision or ("bf16" if device == "cuda" else "fp32")
    v = opts.vllm
    overrides = [f"runtime.device={device}", f"precision={precision}", f"train.seq_length={opts.max_model_len}",
                 f"runtime.seed={seed}", f"rlvr.vllm.tp={v.tp}", f"rlvr.vllm.enforce_eager={str(v.enforce_eager).lower()}",
                 f"rlvr.vllm.gpu_memory_utilization={v.gpu_memory_utilization}",
                 f"rlvr.vllm.startup_timeout_s={v.startup_timeout_s}", f"rlvr.vllm.timeout_s={v.timeout_s}", *extra]
    if v.python:
        overrides.append(f"rlvr.vllm.python={v.python}")
    if v.devices is not None:
        overrides.append(f"rlvr.vllm.devices='{v.devices}'")
    cfg = compose(overrides)
    cfg.rlvr.vllm.env = dict(v.env)
    return cfg


def _vllm(path: str, opts, seed: int, work_dir: Path, label: str) -> TextGenerator:
    import os

    from tulu_mcore.data.tokenizer import load_tokenizer
    from tulu_mcore.rollout.vllm_engine import VllmEngine

    v = opts.vllm
    if not (v.python or os.environ.get("TULU_VLLM_PYTHON")):
        raise UserError("engine.kind=vllm: name the vLLM environment's interpreter with engine.vllm.python=PATH or "
                        "TULU_VLLM_PYTHON (scripts/vllm-env.sh builds the CPU one), or use engine.kind=megatron")
    hf = hf_dir_of(path)
    tok = load_tokenizer(hf)
    cfg = run_config(opts, seed)
    local, per_node = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if v.devices is None and per_node > 1:  # torchrun ranks on one node: each engine on its own GPUs
        cfg.rlvr.vllm.devices = ",".join(str(local * v.tp + i) for i in range(v.tp))
    engine = VllmEngine.serve(cfg, hf, eos_id=tok.eos_token_id, work_dir=work_dir, log=print, keys="engine.vllm",
                              hint="finished shards are kept: rerun the same command to go on from them")
    return TextGenerator(engine, tok, max_len=opts.max_model_len, label=label, close=engine.close)


def _megatron(path: str, opts, seed: int, work_dir: Path, label: str) -> TextGenerator:
    from megatron.core import parallel_state as ps

    from tulu_mcore import runtime
    from tulu_mcore.data.tokenizer import load_tokenizer
    from tulu_mcore.models.factory import build_model
    from tulu_mcore.rollout.megatron_engine import MegatronEngine
    from tulu_mcore.training.init import load_init_weights, resolve_init, tokenizer_path

    cfg = run_config(opts, seed, [f"model.init={path}"])
    init = resolve_init(cfg.model)
    cfg.model.arch = init.arch
    rt = runtime.setup(cfg, training=False)
    if ps.get_tensor_model_parallel_world_size() > 1:
        raise UserError("engine.kind=megatron generates with parallel.tp=1 (each rank its own shards)")
    chunks = build_model(init.arch, rt.layout, cfg.precision, device=rt.device, attention=cfg.model.attention,
                         kernels=cfg.model.kernels, init=False)
    load_init_weights(chunks, init)
    tok = load_tokenizer(tokenizer_path(cfg.model, init))
    engine = MegatronEngine(chunks, eos_id=tok.eos_token_id, max_sequence_length=opts.max_model_len)
    return TextGenerator(engine, tok, max_len=opts.max_model_len, label=label,
                         close=lambda: chunks.clear())
