"""RLVR with real vLLM (the CPU build in its own environment) as the rollout engine: the engine is
killed mid-run -> every rank stops with a clear error naming the intact checkpoint; rerunning resumes
from it, here with asynchronous generation (rollouts one weight version behind) and the session's engine,
already running, as a Slurm job's engine step would be."""

import json
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import ROOT, metrics, train


def _args(run, vllm_hf, vllm_python, *extra):
    return ["recipe=rlvr_grpo", f"model.init={vllm_hf}", f"run.dir={run}", "runtime.device=cpu",
            "metrics.progress=false", "train.save_interval=1", "train.global_batch_size=4",
            "rlvr.samples_per_prompt=4", "rlvr.max_new_tokens=16", "train.export_hf=false", "rlvr.engine=vllm",
            f"rlvr.vllm.python={vllm_python}", *extra]


@pytest.mark.vllm
def test_engine_death_is_reported_and_the_run_resumes_async(vllm_hf, vllm_python, vllm_engine, tmp_path):
    from tulu_mcore.checkpoint.run import resolve_checkpoint
    from tulu_mcore.runtime.launch import _LAUNCH_VARS, torchrun_cmd

    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.Popen(torchrun_cmd("tulu_mcore.cli.train", _args(run, vllm_hf, vllm_python, "train.max_steps=50"),
                                         nproc=2), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 400
        while not (run / "metrics.jsonl").is_file() or len(metrics(run)) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "no two steps within 400 s"
            time.sleep(1)
        os.kill(json.loads((run / "engine" / "ready.json").read_text())["pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "error: the vLLM engine" in err and "is intact: rerun the same command to resume" in err, err[-3000:]
    latest = resolve_checkpoint(run)
    done = int(latest.name.split("_")[1])
    assert done >= 2 and latest.name in err

    # rerun, with another engine: the session's, already running (as a Slurm job's engine step is)
    resumed = train(_args(run, vllm_hf, vllm_python, f"train.max_steps={done + 3}", "rlvr.async_generation=true",
                          *vllm_engine["overrides"]), nproc=2, env=vllm_engine["env"])
    assert f"resumed from {latest}" in resumed.stdout
    after = [m for m in metrics(run) if m["step"] > done]
    assert [m["step"] for m in after] == [done + 1, done + 2, done + 3]
    # the first step after the restart is on-policy; then generation runs a step ahead of training
    assert [m["weight_version"] for m in after] == [done, done, done + 1]
    for m in after:
        assert m["responses"] == 16 and m["weight_push_bytes"] > 0 and 0 <= m["verified_rate"] <= 1
    assert after[0]["logprob_abs_diff"] <= 1e-3  # on-policy: engine and trainer agree
