"""How the vLLM engine process starts, for the trainer that starts it (:mod:`tulu_mcore.rollout.vllm_engine`)
and for ``tulu-launch``'s Slurm engine step alike: the files it runs (``rollout/vllm_side``, in vLLM's own
environment), the model directory it starts from (the policy's ``config.json`` only: dummy weights until
the trainer's first push) and the server options that follow from a run's config."""

from __future__ import annotations

import json
import os
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


def server_command(python: str, model_dir: Path, cfg, *extra: str) -> list[str]:
    """The engine server's command line on this machine (the Slurm engine step renders its own)."""
    return [python, str(SIDE_DIR / "server.py"), "--model", str(model_dir), *extra, *server_args(cfg)]


# the trainer's torch.distributed settings are not the engine's
_LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK",
                "ROLE_RANK", "TORCHELASTIC_RUN_ID")


def engine_env(python: str, key: str, devices: str | None = None, extra: dict | None = None) -> dict[str, str]:
    """The environment of an engine server started on this machine by `python` (the vLLM environment's
    interpreter), answering clients that hold `key`; `extra`: rlvr.vllm.env."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
    env.update(TULU_ENGINE_AUTHKEY=key, PYTHONPATH=str(SIDE_DIR))
    iomp = Path(python).parent.parent / "lib" / "libiomp5.so"  # the vLLM CPU build wants Intel OpenMP first
    if iomp.is_file() and "LD_PRELOAD" not in env:
        env["LD_PRELOAD"] = str(iomp)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = devices
    env.update({str(k): str(v) for k, v in (extra or {}).items()})
    return env
