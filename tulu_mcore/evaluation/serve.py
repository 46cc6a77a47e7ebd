"""vLLM's OpenAI-compatible server on an export, out of process: for the ``vllm`` backend of tulu-eval
(:func:`vllm_server`) and ``convert/serve_vllm.sh`` (``python -m tulu_mcore.evaluation.serve HF_DIR
[vllm serve options]``, which becomes the server).

vLLM lives in its own environment (``$TULU_VLLM_PYTHON``, which ``scripts/vllm-env.sh`` builds for CPU;
else ``vllm`` on PATH), as for rollouts. The server runs in its own session so that stopping it stops
its engine processes; its log is kept beside the results.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from tulu_mcore.errors import UserError

# a launcher's torch.distributed variables are not the server's
_DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
              "TORCHELASTIC_RUN_ID")


def _command() -> tuple[list[str], dict]:
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    py = os.environ.get("TULU_VLLM_PYTHON")
    if py:
        if not os.access(py, os.X_OK):
            raise UserError(f"TULU_VLLM_PYTHON={py} is not an executable")
        cmd, lib = [py, "-m", "vllm.entrypoints.openai.api_server", "--model"], Path(py).parent.parent / "lib"
    elif shutil.which("vllm"):
        cmd, lib = ["vllm", "serve"], Path(shutil.which("vllm")).parent.parent / "lib"
    else:
        raise UserError("backend=vllm: no vLLM; set TULU_VLLM_PYTHON to the vLLM environment's python "
                        "(scripts/vllm-env.sh builds the CPU one) or put `vllm` on PATH")
    # vLLM's CPU build wants Intel OpenMP loaded first and a KV-cache size (GiB); GPU builds ignore both
    if (lib / "libiomp5.so").is_file() and not env.get("LD_PRELOAD"):
        env["LD_PRELOAD"] = str(lib / "libiomp5.so")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return cmd, env


def models(base_url: str, timeout: float = 5) -> list[str]:
    """The model names an OpenAI-compatible server serves (GET /v1/models)."""
    with urllib.request.urlopen(f"{base_url}/models", timeout=timeout) as r:
        return [m["id"] for m in json.loads(r.read())["data"]]


@contextmanager
def vllm_server(hf_dir: Path, log: Path, *, max_model_len: int, dtype: str = "auto", seed: int = 1234,
                extra: list[str] = (), start_timeout_s: float = 900):
    """A vLLM server on `hf_dir` for the duration of the block; yields its base URL (``…/v1``)."""
    from tulu_mcore.runtime.distributed import free_port

    cmd, env = _command()
    port = free_port()
    cmd += [str(hf_dir), "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "model",
            "--max-model-len", str(max_model_len), "--dtype", dtype, "--seed", str(seed), *extra]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        t0 = time.time()
        while True:
            try:
                models(url)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                if proc.poll() is not None:
                    raise UserError(f"vLLM exited ({proc.returncode}) while starting on {hf_dir}; its log: {log}:\n"
                                    + log.read_text(errors="replace")[-3000:]) from None
                if time.time() - t0 > start_timeout_s:
                    raise UserError(f"vLLM did not answer within {start_timeout_s:.0f} s; its log: {log}") from None
                time.sleep(0.5)
        yield url
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """Stops a server started in its own session, its engine processes with it (SIGTERM, then SIGKILL)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def main(argv: list[str] | None = None) -> None:
    import sys

    args = sys.argv[1:] if argv is None else argv
    cmd, env = _command()
    os.execvpe(cmd[0], [*cmd, *args], env)


if __name__ == "__main__":
    from tulu_mcore.errors import cli_errors

    cli_errors(main)()
