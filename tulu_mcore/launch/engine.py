"""How the vLLM engine process starts, for the trainer that starts it (:mod:`tulu_mcore.rollout.vllm_engine`)
and for ``tulu-launch``'s Slurm engine step alike: the files it runs (``rollout/vllm_side``, in vLLM's own
environment), the model directory it starts from (the policy's ``config.json`` only: dummy weights until
the trainer's first push) and the server options that follow from a run's config."""

from __future__ import annotations

import json
from pathlib import Path

from tulu_mcore.arch import HF_DTYPE_NAMES, LlamaArch

SIDE_DIR = Path(__file__).resolve().parent.parent / "rollout" / "vllm_side"  # run by the engine's Python
ENGINE_DIR = "engine"  # under run.dir: the engine's model directory, log, and weights on disk


def write_engine_config(run_dir: Path, arch: LlamaArch, dtype) -> Path:
    """The engine's model directory under run.dir: the policy's config.json only (the engine starts
    with dummy weights; the trainer pushes the real ones). `dtype`: a torch dtype or its name."""
    model_dir = Path(run_dir) / ENGINE_DIR / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(arch.to_hf_config(dtype), indent=2) + "\n")
    return model_dir


def server_args(cfg) -> list[str]:
    """The engine server's options that follow from the run's config (vllm_side/server.py)."""
    v = cfg.rlvr.vllm
    args = ["--tp", str(v.tp), "--dtype", HF_DTYPE_NAMES[cfg.precision.params_dtype],
            "--max-model-len", str(cfg.train.seq_length), "--seed", str(cfg.runtime.seed),
            "--gpu-memory-utilization", str(v.gpu_memory_utilization)]
    return args + (["--enforce-eager"] if v.enforce_eager else [])
