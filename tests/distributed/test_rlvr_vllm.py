"""RLVR with real vLLM (the CPU build in its own environment) as the rollout engine: an engine worker
dies in the middle of a weight push (a test hook) -> every rank stops within rlvr.vllm.timeout_s with a
clear error naming the intact checkpoint; rerunning resumes from it, here with asynchronous generation
(rollouts one weight version behind) and the session's engine, already running, as a Slurm job's engine
step would be."""

import os
import subprocess
import time

import pytest

from tests.conftest import ROOT, metrics, train


def _args(run, vllm_hf, vllm_python, *extra):
    return ["recipe=rlvr_grpo", f"model.init={vllm_hf}", f"run.dir={run}", "runtime.device=cpu",
            "metrics.progress=false", "train.save_interval=1", "train.global_batch_size=4",
            "rlvr.samples_per_prompt=4", "rlvr.max_new_tokens=16", "train.export_hf=false", "rlvr.engine=vllm",
            f"rlvr.vllm.python={vllm_python}", "rlvr.vllm.enforce_eager=true", *extra]


@pytest.mark.vllm
def test_engine_death_mid_push_is_reported_on_every_rank_and_the_run_resumes_async(vllm_hf, vllm_python, vllm_engine,
                                                                                   tmp_path):
    from tulu_mcore.checkpoint.run import resolve_checkpoint
    from tulu_mcore.runtime.launch import _LAUNCH_VARS, torchrun_cmd

    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", TULU_WEIGHT_SYNC_FAULT="die:0@3")  # push 3 (after step 3), at its first bucket
    timeout_s = 60
    cmd = torchrun_cmd("tulu_mcore.cli.train", _args(run, vllm_hf, vllm_python, "train.max_steps=50",
                                                      f"rlvr.vllm.timeout_s={timeout_s}"),
                       nproc=2)
    cmd[cmd.index("torch.distributed.run") + 1:1] = ["--tee", "2"]  # every rank's stderr, prefixed with its rank
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log, died = run / "engine" / "vllm.log", None
    try:
        deadline = time.time() + 400
        while proc.poll() is None:
            if died is None and log.is_file() and "test hook: worker 0 exits at bucket 0" in log.read_text():
                died = time.time()
            assert time.time() < deadline, "the run neither failed nor ended within 400 s"
            time.sleep(0.5)
        stopped = time.time()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and died is not None, err[-3000:]
    assert stopped - died < timeout_s, (stopped - died, err[-3000:])
    latest = resolve_checkpoint(run)
    done = int(latest.name.split("_")[1])
    assert done == 2  # step 3 stopped at its push: its checkpoint was never written
    for rank in (0, 1):
        lines = [line for line in err.splitlines() if line.startswith(f"[default{rank}]:error: ")]
        assert any("the vLLM engine" in line for line in lines), (rank, err[-3000:])
        assert any(f"the last checkpoint, {latest}, is intact: rerun the same command" in line for line in lines)

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
