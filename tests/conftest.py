"""Shared fixtures: tiny random Llama checkpoints (HF and converted), and helpers that run the CLIs and
torchrun workers in subprocesses (so this process never installs the CPU runtime by accident)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import rank_pool

ROOT = Path(__file__).resolve().parent.parent
WORKERS = ROOT / "tests" / "workers"
INIT_STD = 0.1  # logits of a few units: a 1e-4 parity bound is then a strict one


def pytest_collection_modifyitems(config, items):
    """Tiers: tests/unit is `unit` and in the `fast` loop; tests/distributed is `dist` (its `fast` ones are
    marked in place); tests on the real Slurm / vLLM are `slurm` / `vllm`."""
    for item in items:
        path = str(item.fspath)
        if "/distributed/" in path:
            item.add_marker(pytest.mark.dist)
        elif "/unit/" in path:
            item.add_marker(pytest.mark.unit)
            item.add_marker(pytest.mark.fast)
        if "slurm" in item.fixturenames:
            item.add_marker(pytest.mark.slurm)
        if "vllm_python" in item.fixturenames:
            item.add_marker(pytest.mark.vllm)
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device (none visible)"))


def run_cli(module: str, *args: str, check: bool = False, fresh: bool = False) -> subprocess.CompletedProcess:
    """A command (`python -m module args`) as a user runs it: its exit code, stdout and stderr; on the
    session's one-rank pool (a failed command leaves nothing behind with one rank), or in a fresh process
    with `fresh`."""
    if fresh:
        proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                              cwd=ROOT)
    else:
        proc = rank_pool.run(module, [str(a) for a in args], 1)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-5000:]}")
    return proc


def convert(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`tulu-convert` on one rank of the session's rank pool (see run_cli)."""
    return run_cli("tulu_mcore.cli.convert", *args, check=check)


def run_worker(script: str, args: list[str], nproc: int, env: dict | None = None) -> None:
    """A tests/workers script on `nproc` ranks of the session's rank pool (tests/rank_pool.py)."""
    proc = rank_pool.run(str(WORKERS / script), [str(a) for a in args], nproc, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"{script} on {nproc} ranks failed:\n{proc.stdout}\n{proc.stderr[-6000:]}")


def hf_tensors(d: Path) -> dict:
    """Every tensor of an HF directory's safetensors files, by name."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def read_json(path: Path):
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="session")
def tiny_arch():
    from tulu_mcore.config.compose import model_preset

    return model_preset("tiny").arch


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory, tiny_arch) -> dict[str, Path]:
    """Random tiny LlamaForCausalLM checkpoints (fp32, GQA, llama3 RoPE): untied and tied."""
    import dataclasses

    from tulu_mcore.models.llama.tiny import make_hf_llama

    root = tmp_path_factory.mktemp("hf")
    out = {}
    for name, tied in (("untied", False), ("tied", True)):
        arch = dataclasses.replace(tiny_arch, tie_word_embeddings=tied)
        out[name] = make_hf_llama(root / name, arch, seed=1 if tied else 0, init_std=INIT_STD)
    return out


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, tiny_hf) -> dict[str, Path]:
    """The tiny HF checkpoints converted with `tulu-convert hf-to-mcore` (one process)."""
    root = tmp_path_factory.mktemp("mcore")
    out = {}
    for name, hf in tiny_hf.items():
        convert("hf-to-mcore", hf, root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="session")
def sft_hf(tmp_path_factory, tiny_hf) -> Path:
    """The tiny untied HF Llama with the built-in tiny tokenizer beside it (a complete HF directory)."""
    import shutil

    from tulu_mcore.data.sources import TINY_TOKENIZER

    d = tmp_path_factory.mktemp("sft") / "hf"
    shutil.copytree(tiny_hf["untied"], d)
    for f in TINY_TOKENIZER.iterdir():
        shutil.copy2(f, d / f.name)
    return d


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """The vLLM engine environment's interpreter (scripts/vllm-env.sh; the README's test command sets it
    up); the test skips, with the reason, where it could not be installed."""
    import os

    py = os.environ.get("TULU_VLLM_PYTHON")
    if not py:
        reason = os.environ.get("TULU_VLLM_UNAVAILABLE", "TULU_VLLM_PYTHON is not set (source scripts/vllm-env.sh)")
        pytest.skip(f"no vLLM environment: {reason}")
    return py


@pytest.fixture(scope="session")
def vllm_hf(tmp_path_factory, tiny_arch) -> Path:
    """The tiny HF Llama (head_dim 32: vLLM's CPU attention has no kernel for 16) and the built-in
    tokenizer beside it."""
    import dataclasses
    import shutil

    from tulu_mcore.data.sources import TINY_TOKENIZER
    from tulu_mcore.models.llama.tiny import make_hf_llama

    d = tmp_path_factory.mktemp("vllm") / "hf"
    make_hf_llama(d, dataclasses.replace(tiny_arch, head_dim=32), seed=3, init_std=INIT_STD)
    for f in TINY_TOKENIZER.iterdir():
        shutil.copy2(f, d / f.name)
    return d


@pytest.fixture(scope="session")
def vllm_engine(vllm_python, vllm_hf, tmp_path_factory):
    """One vLLM engine server (the CPU build, rollout/vllm_side/server.py) for the session's RL tests, which
    connect to it as a Slurm job's trainers connect to their engine step (`rlvr.vllm.address` and the key
    in TULU_ENGINE_AUTHKEY); every trainer pushes its own weights first. Started once, stopped at the
    end: {"overrides": [...], "env": {...}}."""
    import os
    import secrets
    import signal
    import time

    from tulu_mcore.arch import LlamaArch
    from tulu_mcore.config.compose import compose
    from tulu_mcore.launch.engine import engine_env, server_command, write_engine_config

    root = tmp_path_factory.mktemp("engine")
    # the RL tests' row length and dtype; eager: vLLM's compile of the model would add ~25 s to each start
    # on 2 cores, and these tests check weights and tokens, not kernels
    cfg = compose(["runtime.device=cpu", "train.seq_length=256", "rlvr.vllm.enforce_eager=true"])
    model_dir = write_engine_config(root, LlamaArch.from_hf_dir(vllm_hf), cfg.precision.params_dtype)
    key, ready = secrets.token_hex(16), root / "ready.json"
    with open(root / "vllm.log", "ab") as log:
        proc = subprocess.Popen(server_command(vllm_python, model_dir, cfg, "--ready-file", str(ready)),
                                env=engine_env(vllm_python, key), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.time() + 600
        while not ready.is_file():
            assert proc.poll() is None and time.time() < deadline, (root / "vllm.log").read_text()[-4000:]
            time.sleep(0.5)
        info = json.loads(ready.read_text())
        yield {"overrides": [f"rlvr.vllm.address={info['host']}:{info['port']}"], "env": {"TULU_ENGINE_AUTHKEY": key}}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@pytest.fixture(scope="session")
def demo_runs(tmp_path_factory) -> Path:
    """The main job (`tulu-demo`: SFT -> DPO -> RLVR on the built-in tiny default, 2 ranks), run once;
    its output directory (sft/, dpo/, rlvr/, summary.json)."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    proc = subprocess.run([sys.executable, "-m", "tulu_mcore.cli.demo", "--out", str(out)], capture_output=True,
                          text=True, cwd=ROOT, timeout=1200)
    if proc.returncode != 0:
        raise AssertionError(f"tulu-demo failed ({proc.returncode}):\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}")
    (out / "stdout.txt").write_text(proc.stdout)
    return out


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tokenized")


def train(args: list[str], nproc: int = 1, check: bool = True, timeout: float = 600,
          fresh: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
    """tulu-train with `args` on `nproc` ranks of the session's rank pool (tests/rank_pool.py); in a fresh
    process (torchrun when more than one rank) with `fresh`, and whenever the run may fail (`check=False`),
    so that a failing rank cannot stall the pool."""
    from tulu_mcore.runtime.launch import torchrun

    args = [str(a) for a in args]
    if not any(a.startswith("metrics.plots=") for a in args):  # plots are tested on their own (~1 s a run)
        args.append("metrics.plots=false")
    if not fresh and check:
        proc = rank_pool.run("tulu_mcore.cli.train", args, nproc, timeout=timeout, env=env)
    elif nproc > 1:
        proc = torchrun("tulu_mcore.cli.train", args, nproc=nproc, capture=True, timeout=timeout, env=env)
    else:
        import os

        proc = subprocess.run([sys.executable, "-m", "tulu_mcore.cli.train", *args], capture_output=True,
                              text=True, cwd=ROOT, timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"tulu-train {args} ({nproc} ranks) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def metrics(run_dir: Path) -> list[dict]:
    from tulu_mcore.metrics.logger import read_metrics

    return read_metrics(run_dir)


def open_instruct_labels(tok, messages) -> tuple[list[int], list[int]]:
    """The reference for the Tülu template and labels, written out independently of tulu_mcore: render
    the "tulu" template, then mask every non-assistant span found by re-tokenizing conversation
    prefixes (open-instruct's encode_sft_example)."""
    eos = tok.eos_token

    def render(ms, gen=False):
        out = ""
        for i, m in enumerate(ms):
            if m["role"] == "assistant":
                out += f"<|assistant|>\n{m['content']}{eos}" + ("\n" if i < len(ms) - 1 else "")
            else:
                out += f"<|{m['role']}|>\n{m['content']}\n"
        return out + ("<|assistant|>\n" if gen else "")

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    full = ids(render(messages))
    labels = list(full)
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            continue
        gen = i + 1 < len(messages) and messages[i + 1]["role"] == "assistant"
        a, b = len(ids(render(messages[:i]))) if i else 0, len(ids(render(messages[: i + 1], gen)))
        labels[a:b] = [-100] * (b - a)
    return full, labels


def builtin_rows(dest: Path, source: str, n: int) -> Path:
    """A file of the first `n` rows of a built-in data set (held-out data for eval.data in the tests: seen in
    training, which the numbers compared do not depend on)."""
    from tulu_mcore.data.sources import BUILTIN

    dest.write_text("\n".join(BUILTIN[source].read_text().splitlines()[:n]) + "\n")
    return dest
