"""tulu-launch on a real single-node Slurm (started by the session): a 2-task CPU SFT job runs to
completion; the same job, warned with SIGUSR1 mid-run, checkpoints, requeues itself and ends with the
losses and data order of an uninterrupted run; the rendered 405B script line by line; clear errors."""

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, metrics, train
from tests.slurm_cluster import LocalSlurm

STEPS = 30


@pytest.fixture(scope="module")
def slurm():
    import shutil
    import tempfile
    from pathlib import Path

    # munged wants every directory above its socket world-executable: not pytest's 0700 tmp dirs
    root = Path(tempfile.mkdtemp(prefix="tulu-slurm-"))
    root.chmod(0o755)
    try:
        cluster = LocalSlurm(root, cpus=4).up()
    except RuntimeError as e:
        shutil.rmtree(root, ignore_errors=True)
        if "needs root" in str(e):
            pytest.skip(str(e))
        raise
    yield cluster
    cluster.down()
    shutil.rmtree(root, ignore_errors=True)


def launch(args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tulu_mcore.cli.launch", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env=env)


def sft_job(run_dir, cache, *extra):
    return ["recipe=sft", "launcher=slurm", "launcher.gpus=false", "launcher.ranks_per_node=2",
            "launcher.exclusive=false", "launcher.env_profile=none", "launcher.signal_seconds=60",
            "runtime.device=cpu", "metrics.progress=false", f"run.dir={run_dir}", f"data.cache_dir={cache}",
            f"train.max_steps={STEPS}", "train.global_batch_size=16", "train.export_hf=false", *extra]


def submit(slurm, args) -> str:
    proc = launch(args, env=slurm.env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_sft_job_runs_to_completion(slurm, data_cache, tmp_path):
    run = tmp_path / "run"
    job = submit(slurm, sft_job(run, data_cache))
    info = slurm.wait(job)
    log = (run / "logs" / f"slurm-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, log[-3000:])
    assert "[tulu-launch] job" in log and f"trained steps 1..{STEPS} of {STEPS}" in log
    assert [m["step"] for m in metrics(run)] == list(range(1, STEPS + 1))
    assert (run / "job.sbatch").read_text().startswith("#!/bin/bash")


def test_requeued_job_resumes_without_repeating_or_skipping_data(slurm, data_cache, tmp_path):
    ref = tmp_path / "uninterrupted"
    train(["recipe=sft", "runtime.device=cpu", "metrics.progress=false", f"run.dir={ref}", f"data.cache_dir={data_cache}",
           f"train.max_steps={STEPS}", "train.global_batch_size=16", "train.export_hf=false"], nproc=2)
    run = tmp_path / "run"
    job = submit(slurm, sft_job(run, data_cache))
    end = time.time() + 240
    while time.time() < end and len(metrics(run) if (run / "metrics.jsonl").exists() else []) < 5:
        time.sleep(0.2)
    assert len(metrics(run)) < STEPS - 5, "the run finished before it could be interrupted"
    # what Slurm does launcher.signal_seconds before the time limit
    slurm.run("scancel", "--batch", "--signal=USR1", job)
    info = slurm.wait(job, timeout=400)
    log = (run / "logs" / f"slurm-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info.get("Restarts") == "1", (info, log[-4000:])
    assert "stopping on SIGUSR1" in log and "requeueing job" in log and "restart 1" in log and "resumed from" in log
    got, want = metrics(run), metrics(ref)
    assert [m["step"] for m in got] == list(range(1, STEPS + 1))  # nothing repeated, nothing skipped
    for a, b in zip(got, want):
        assert (a["sequences"], a["trained_tokens"]) == (b["sequences"], b["trained_tokens"]), a["step"]  # same data
        assert abs(a["loss"] - b["loss"]) <= 1e-6 * abs(b["loss"]), (a["step"], a["loss"], b["loss"])
    assert got[-1]["loss"] == pytest.approx(want[-1]["loss"], rel=1e-6)


def test_job_saves_before_its_time_limit_and_requeues(slurm, data_cache, tmp_path):
    """run.time_limit shorter than the run: each window saves and stops in time, leaves its mark, and the
    job requeues itself until the run is done, every step once."""
    run = tmp_path / "run"
    steps = 120  # ~0.2 s each: more than one window of 35 s holds after start-up and the margin
    job = submit(slurm, sft_job(run, data_cache, f"train.max_steps={steps}", "run.time_limit=35",
                                "train.global_batch_size=32", "launcher.max_restarts=6", "train.save_interval=1000"))
    info = slurm.wait(job, timeout=600)
    log = (run / "logs" / f"slurm-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED" and int(info.get("Restarts", 0)) >= 1, (info, log[-4000:])
    assert "stopping before run.time_limit" in log and "requeueing job" in log and "resumed from" in log
    assert [m["step"] for m in metrics(run)] == list(range(1, steps + 1))  # nothing repeated or skipped
    assert not (run / "STOPPED_BEFORE_TIME_LIMIT").exists()


def test_no_sbatch_on_path_is_one_clear_message(tmp_path):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}
    proc = launch(["recipe=sft", "launcher=slurm", f"run.dir={tmp_path / 'run'}"], env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: sbatch is not on PATH" in proc.stderr


def test_unreachable_controller_is_one_clear_message(slurm, tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text(slurm.conf.read_text() + "SlurmctldPort=6999\n")  # where no controller listens
    env = {**slurm.env, "SLURM_CONF": str(conf)}
    proc = launch(["recipe=sft", "launcher=slurm", "launcher.gpus=false", f"run.dir={tmp_path / 'run'}"], env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: sbatch" in proc.stderr and "failed" in proc.stderr, proc.stderr


def test_torchrun_per_node_job_runs(slurm, data_cache, tmp_path):
    run = tmp_path / "run"
    job = submit(slurm, sft_job(run, data_cache, "launcher.process_model=torchrun_per_node", "train.max_steps=3"))
    info = slurm.wait(job)
    log = (run / "logs" / f"slurm-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED", (info, log[-3000:])
    assert [m["step"] for m in metrics(run)] == [1, 2, 3]


def test_dry_run_prints_and_submits_nothing(tmp_path):
    proc = launch(["recipe=sft", "launcher=slurm", "launcher.dry_run=true", "launcher.gpus=false",
                   f"run.dir={tmp_path / 'run'}"], env={**os.environ, "PATH": os.path.dirname(sys.executable)})
    assert proc.returncode == 0 and proc.stdout.startswith("#!/bin/bash") and "#SBATCH --nodes=1" in proc.stdout
    assert not (tmp_path / "run").exists()


def test_local_launcher_runs_torchrun(data_cache, tmp_path):
    run = tmp_path / "run"
    proc = launch(["recipe=sft", "launcher.ranks_per_node=2", "runtime.device=cpu", "metrics.progress=false",
                   f"run.dir={run}", f"data.cache_dir={data_cache}", "train.max_steps=2", "train.export_hf=false"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [m["step"] for m in metrics(run)] == [1, 2]
