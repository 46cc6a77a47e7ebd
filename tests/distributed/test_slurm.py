"""tulu-launch on a real single-node Slurm (started by the session): a 2-task CPU SFT job runs to
completion; the same job, warned with SIGUSR1 mid-run, checkpoints, requeues itself and ends with the
losses and data order of an uninterrupted run; every golden script through Slurm's own parser
(``sbatch --test-only``, and ``srun --test-only`` for each step); the multi-node vLLM engine step (two
tasks, one TP2 engine, no Ray) serving real vLLM; clear errors."""

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


def test_engine_step_runs_one_vllm_engine_over_two_tasks(slurm, vllm_python, vllm_hf, tmp_path):
    """The rendered multi-node engine step, run by Slurm with its two tasks on the one local node: task 0
    serves, task 1 runs vLLM's headless workers (--node-rank from SLURM_PROCID), one TP2 engine across
    them (vLLM's multiprocessing backend, no Ray). Pushed weights reach both halves: its greedy tokens and
    log-probs are the HF model's."""
    import secrets
    from multiprocessing.connection import Client

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tulu_mcore.arch import LlamaArch
    from tulu_mcore.config.compose import compose
    from tulu_mcore.launch.engine import engine_env, write_engine_config
    from tulu_mcore.launch.slurm import engine_step

    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    cfg = compose(["recipe=rlvr_grpo", "rlvr.engine=vllm", "rlvr.vllm.tp=2", "launcher=slurm", "launcher.engine_nodes=2",
                   "launcher.ranks_per_node=1", "launcher.gpus=false", "train.seq_length=128", f"run.dir={run}",
                   f"rlvr.vllm.python={vllm_python}", "runtime.device=cpu"])
    write_engine_config(run, LlamaArch.from_hf_dir(vllm_hf), cfg.precision.params_dtype)
    key = secrets.token_hex(16)
    lines = "\n".join(engine_step(cfg))
    # the two engine "nodes" are this one node: the same step, its two tasks placed here
    for old, new in [('NODES=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))', "NODES=(localhost localhost localhost)"),
                     ("export TULU_ENGINE_AUTHKEY=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n')",
                      f"export TULU_ENGINE_AUTHKEY={key}"),
                     ('--nodes=2 --ntasks=2 --ntasks-per-node=1 --nodelist="$ENGINE_NODES"',
                      '--nodes=1 --ntasks=2 --ntasks-per-node=2 --nodelist="$ENGINE_HOST"')]:
        assert lines.count(old) == 1, old
        lines = lines.replace(old, new)
    env = engine_env(vllm_python, key)
    setup = [f"export {k}={shlex.quote(env[k])}" for k in ("LD_PRELOAD", "VLLM_CPU_KVCACHE_SPACE") if k in env]
    script = tmp_path / "engine.sbatch"
    script.write_text("\n".join(["#!/bin/bash", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=2",
                                 f"#SBATCH --output={run}/logs/slurm-%j.out", "set -uo pipefail", *setup,
                                 "export VLLM_CPU_OMP_THREADS_BIND=nobind", lines, 'wait "$ENGINE_STEP"', ""]))
    job = slurm.run("sbatch", "--parsable", str(script)).stdout.strip().split(";")[0]
    log = run / "logs" / f"engine-{job}.log"
    try:
        deadline = time.time() + 420
        while "[engine] serving on" not in (log.read_text() if log.exists() else ""):
            state = slurm.job(job).get("JobState")
            assert state in ("PENDING", "RUNNING", "CONFIGURING") and time.time() < deadline, (
                state, log.read_text()[-4000:] if log.exists() else "no engine log")
            time.sleep(1)
        text = log.read_text()
        assert "[engine] node 1 of 2: headless workers of localhost:" in text, text[-4000:]
        conn = Client(("127.0.0.1", 40000 + int(job) % 20000), authkey=bytes.fromhex(key))

        def call(op, **kw):
            conn.send({"op": op, **kw})
            reply = conn.recv()
            assert reply["ok"], reply.get("error")
            return reply

        weights = load_file(str(next(vllm_hf.glob("*.safetensors"))))
        packed = [(k, str(v.dtype).removeprefix("torch."), list(v.shape), v.contiguous().view(torch.uint8).numpy().tobytes())
                  for k, v in weights.items()]
        call("begin")
        assert call("load", packed=packed)["tensors"] == len(packed)
        assert call("end", version=1)["version"] == 1
        prompt = [5, 17, 42, 9, 11]
        out = call("generate", prompts=[prompt], n=1, max_new_tokens=8, temperature=0.0, seed=0, stop_token_ids=[])
        assert out["version"] == 1
        ids, logps, _ = out["results"][0][0]
        assert ids
        model = AutoModelForCausalLM.from_pretrained(vllm_hf, torch_dtype=torch.float32)
        with torch.no_grad():
            logits = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1:-1].log_softmax(-1)
        assert logits.argmax(-1).tolist() == ids  # greedy: the HF model's tokens
        want = logits.gather(1, torch.tensor(ids)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(logps), want, atol=1e-3), (logps, want.tolist())
        call("shutdown")
    finally:
        slurm.run("scancel", job, check=False)
        slurm.wait(job, timeout=120)
