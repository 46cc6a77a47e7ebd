"""tulu-launch on a real single-node Slurm (started by the session): a 2-task CPU SFT job runs to
completion; the same job, warned with SIGUSR1 mid-run, checkpoints, requeues itself and ends with the
losses and data order of an uninterrupted run; every golden script through Slurm's own parser
(``sbatch --test-only``, and ``srun --test-only`` for each step); on a 3-node local Slurm, an RL job with
its trainer on one node and its multi-node vLLM engine (one TP2 engine over two nodes, no Ray) on the
two others; clear errors."""

import os
import re
import shlex
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, metrics, train
from tests.slurm_cluster import LocalSlurm

STEPS = 30


def local_cluster(nodes: int):
    """A local Slurm of `nodes` nodes for the module; skipped where it cannot be installed."""
    import shutil
    import tempfile
    from pathlib import Path

    # munged wants every directory above its socket world-executable: not pytest's 0700 tmp dirs
    root = Path(tempfile.mkdtemp(prefix=f"tulu-slurm{nodes}-"))
    root.chmod(0o755)
    try:
        cluster = LocalSlurm(root, cpus=4, nodes=nodes).up()
    except RuntimeError as e:
        shutil.rmtree(root, ignore_errors=True)
        if "needs root" in str(e):
            pytest.skip(str(e))
        raise
    yield cluster
    cluster.down()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def slurm():
    yield from local_cluster(1)


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
    assert (run / "job.sbatch").stat().st_mode & 0o777 == 0o600  # launcher.env values may be secrets


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
    # 0.15-0.3 s a step: more than one 30 s window holds after start-up and the margin, on a fast machine too
    steps = 150
    job = submit(slurm, sft_job(run, data_cache, f"train.max_steps={steps}", "run.time_limit=30",
                                "train.global_batch_size=32", "launcher.max_restarts=8", "train.save_interval=1000"))
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


# what Slurm's controller answers --test-only once every option has parsed (a syntax error is the client's
# own message and exit code 255 instead)
WILL_RUN = re.compile(r"(sbatch|srun): Job \d+ to start at \S+ using \d+ processors on nodes localhost in partition debug")
TOO_BIG = "allocation failure: Requested node configuration is not available"  # more nodes/CPUs than the cluster's
NO_GPUS = "sbatch: error: Invalid generic resource (gres) specification"  # GPUs asked of a cluster without them


def _test_only(slurm, cmd, cwd):
    env = {k: v for k, v in slurm.env.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}  # no outer job
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def test_every_golden_script_passes_slurms_parser(slurm, tmp_path):
    """The checked-in launchers/slurm/*.sbatch as submitted, and each rendered for a CPU partition
    (launcher.gpus=false) with every srun step's options: Slurm parses them all (a misspelt or malformed
    option is refused by the client, exit 255) and only the size of the request stops it here (1 node, 4
    CPUs, no GPUs); with the sizes overridden on the command line the same script would start. srun warns
    when --nodes, --ntasks and --ntasks-per-node disagree: no step may draw a warning."""
    from tests.unit.test_launch import golden, srun_steps
    from tulu_mcore.cli.launch import render_slurm
    from tulu_mcore.config.compose import compose

    fit = ["--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=0"]
    for experiment in golden.EXPERIMENTS:
        script = golden.OUT / f"{experiment}.sbatch"
        assert _test_only(slurm, ["sbatch", "--test-only", str(script)], tmp_path) == (1, NO_GPUS), experiment
        rc, out = _test_only(slurm, ["sbatch", "--test-only", *fit, str(script)], tmp_path)
        assert rc == 0 and WILL_RUN.fullmatch(out), (experiment, rc, out)

        args = [*golden.launch_args(experiment), "launcher.gpus=false"]
        text = render_slurm(compose(args), args, portable=True)
        cpu = tmp_path / f"{experiment}.sbatch"
        cpu.write_text(text)
        assert _test_only(slurm, ["sbatch", "--test-only", str(cpu)], tmp_path) == (1, TOO_BIG), experiment
        rc, out = _test_only(slurm, ["sbatch", "--test-only", *fit[:2], str(cpu)], tmp_path)
        assert rc == 0 and WILL_RUN.fullmatch(out), (experiment, rc, out)

        steps = srun_steps(text)
        assert steps, experiment
        for step in steps:
            words = shlex.split(step)[1:]
            options = [re.sub(r"^--nodelist=\$\w+$", "--nodelist=localhost", w)
                       for w in words[:next(i for i, w in enumerate(words) if not w.startswith("--"))]]
            rc, out = _test_only(slurm, ["srun", "--test-only", *options, "true"], tmp_path)
            assert (rc == 0 and WILL_RUN.fullmatch(out)) or (rc, out) == (1, TOO_BIG), (experiment, options, rc, out)


@pytest.fixture(scope="module")
def slurm3():
    """A 3-node local Slurm: one slurmd per node (n1, n2, n3 on 127.0.0.1-3), names that do not resolve."""
    yield from local_cluster(3)


def test_rl_job_trains_on_one_node_with_its_vllm_engine_on_two_others(slurm3, vllm_python, vllm_hf, data_cache,
                                                                       tmp_path):
    """tulu-launch's GRPO job on 3 nodes as rendered: the trainer on n1, the vLLM engine on n2 and n3 (one
    task per node, one TP2 engine across them: vLLM's multiprocessing backend, no Ray; node 1 runs the
    headless workers), bound to n2's address, which the trainer dials. Weights pushed over the collective
    transport reach both halves of the engine: its log-probs of the sampled tokens are the trainer's."""
    from tulu_mcore.launch.engine import engine_env

    run = tmp_path / "run"
    iomp = {k: v for k, v in engine_env(vllm_python, "00").items() if k in ("LD_PRELOAD", "VLLM_CPU_KVCACHE_SPACE")}
    args = ["recipe=rlvr_grpo", "launcher=slurm", "launcher.gpus=false", "launcher.nodes=1", "launcher.ranks_per_node=1",
            "launcher.engine_nodes=2", "launcher.exclusive=false", "launcher.env_profile=none",
            f"model.init={vllm_hf}", f"run.dir={run}", f"data.cache_dir={data_cache}", "runtime.device=cpu",
            "metrics.progress=false", "metrics.plots=false", "train.max_steps=2", "train.global_batch_size=4",
            "train.seq_length=256", "rlvr.samples_per_prompt=4", "rlvr.max_new_tokens=16", "train.export_hf=false",
            "rlvr.engine=vllm", "rlvr.vllm.tp=2", f"rlvr.vllm.python={vllm_python}", "rlvr.vllm.enforce_eager=true",
            "+launcher.env.OMP_NUM_THREADS=1",
            *(f"+rlvr.vllm.env.{k}={v}" for k, v in {**iomp, "VLLM_CPU_OMP_THREADS_BIND": "nobind"}.items())]
    job = submit(slurm3, args)
    info = slurm3.wait(job, timeout=600)
    log = (run / "logs" / f"slurm-{job}.out").read_text()
    engine = (run / "logs" / f"engine-{job}.log").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, log[-3000:], engine[-3000:])
    assert f"[tulu-launch] job {job} restart 0 on n[1-3]" in log
    assert "[engine] serving on 127.0.0.2:" in engine  # n2's NodeAddr: the name "n2" resolves nowhere
    assert "[engine] node 1 of 2: headless workers of 127.0.0.2:" in engine, engine[-3000:]
    m = metrics(run)
    assert [x["step"] for x in m] == [1, 2] and all(x["responses"] == 16 for x in m)
    assert all(x["logprob_abs_diff"] <= 1e-3 for x in m), [x["logprob_abs_diff"] for x in m]
    assert [x["weight_version"] for x in m] == [0, 1]  # step 2 sampled from the weights pushed after step 1
    # the pushes went over the collective transport to both nodes' workers, each receiving every tensor (checked
    # by the trainer), checksummed and probed
    assert "[engine] collective weight transport: 2 worker(s) joined 1 sender(s) at 127.0.0.1:" in engine, engine[-3000:]
    assert all(x["weight_push_workers"] == 2 and x["weight_verify_s"] > 0 and x["weight_probe_gap"] <= 1e-3 for x in m)


def test_synth_job_splits_its_shards_over_slurm_tasks(slurm, tmp_path):
    """tulu-synth launcher.name=slurm: one srun step of 2 tasks; each writes its own shards (its
    SLURM_PROCID of SLURM_NTASKS), task 0 waits for all and writes the final rows, equal to a run here."""
    import json

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Describe the harbor of town number {i}."}) + "\n"
                               for i in range(24)))
    common = ["kind=ifeval", f"source=[{prompts}]", "shard_size=3", "decontam.enabled=false"]
    out = tmp_path / "job"
    proc = subprocess.run([sys.executable, "-m", "tulu_mcore.cli.synth", "rlvr", *common, f"out={out}",
                           "launcher.name=slurm", "launcher.gpus=false", "launcher.ranks_per_node=2",
                           "launcher.exclusive=false", "launcher.env_profile=none"],
                          capture_output=True, text=True, cwd=ROOT, env=slurm.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = proc.stdout.strip().splitlines()[-1]
    info = slurm.wait(job)
    log = (out / "logs" / f"slurm-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, log[-3000:])
    assert "2 task(s)" in log and "rlvr: 24 rows" in log, log[-3000:]
    # each task logs its own shards: 8 in all, 4 each
    assert log.count("; 3 left for this task") == 2 and log.count("; 0 left for this task") == 2, log[-3000:]
    here = tmp_path / "here"
    subprocess.run([sys.executable, "-m", "tulu_mcore.cli.synth", "rlvr", *common, f"out={here}"], check=True,
                   capture_output=True, cwd=ROOT)
    assert (out / "rlvr.jsonl").read_text() == (here / "rlvr.jsonl").read_text()
    assert (out / "synth.sbatch").stat().st_mode & 0o777 == 0o600
