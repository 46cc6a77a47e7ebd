"""The Slurm batch script tulu-launch renders: the 405B job line by line, the torchrun-per-node variant,
refused launcher settings, the vLLM engine's step (one node, and several without Ray), and the
node/task arithmetic of every srun line of every golden experiment's script."""

import importlib.util
import math
import os
import re
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tulu_mcore.cli.launch import render_slurm, train_overrides
from tulu_mcore.config.compose import compose
from tulu_mcore.errors import UserError
from tulu_mcore.launch.slurm import render_sbatch

ARGS_405B = ["experiment=tulu3_405b_sft", "launcher=slurm", "launcher.nodes=32", "launcher.partition=batch",
             "launcher.account=llm", 'launcher.container_image="nvcr.io#nvidia/pytorch:25.01-py3"',
             "launcher.container_mounts=[/lustre:/lustre]", "launcher.container_workdir=/workspace/tulu",
             "launcher.time=2-00:00:00", "launcher.singleton=true", "+launcher.env.NCCL_IB_HCA=mlx5",
             "run.dir=/lustre/runs/405b"]

EXPECTED_405B = r"""#!/bin/bash
# written by tulu-launch; to change it, rerun tulu-launch (launcher.dry_run=true prints it)
#SBATCH --job-name=tulu-sft-405b
#SBATCH --nodes=32
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --partition=batch
#SBATCH --account=llm
#SBATCH --time=2-00:00:00
#SBATCH --exclusive
#SBATCH --output=/lustre/runs/405b/logs/slurm-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --dependency=singleton

set -uo pipefail
cd /workspace/tulu
export TORCH_NCCL_AVOID_RECORD_STREAMS=1
export NCCL_NVLS_ENABLE=0
export NCCL_IB_TIMEOUT=19
export NCCL_IB_QPS_PER_CONNECTION=4
export NCCL_P2P_NET_CHUNKSIZE=2097152
export NCCL_DEBUG=WARN
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export UCX_TLS=rc,cuda_copy,cuda_ipc,self,sm
export UCX_MEMTYPE_CACHE=n
export UCX_WARN_UNUSED_ENV_VARS=n
export NCCL_IB_HCA=mlx5
# a node's address as Slurm reaches it (NodeAddr; its name where Slurm has none): names need not resolve
node_addr() { local a; a=$(scontrol show node "$1" 2>/dev/null | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2); echo "${a:-$1}"; }
export MASTER_ADDR=$(node_addr "$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)")
export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
RESTART=${SLURM_RESTART_COUNT:-0}
echo "[tulu-launch] job $SLURM_JOB_ID restart $RESTART on $SLURM_JOB_NODELIST ($(date -Is))"

# SIGUSR1 before the time limit: the trainers checkpoint and exit, then the job requeues itself
REQUEUE=0
on_usr1() {
  REQUEUE=1; echo "[tulu-launch] time-limit warning: checkpointing"
  kill -USR1 "$STEP" 2>/dev/null  # srun passes it to every task
}
trap on_usr1 USR1

srun --kill-on-bad-exit=1 --wait=60 --nodes=32 --ntasks=256 --ntasks-per-node=8 --container-image='nvcr.io#nvidia/pytorch:25.01-py3' --container-mounts=/lustre:/lustre --container-workdir=/workspace/tulu \
    python -m tulu_mcore.cli.train \
    experiment=tulu3_405b_sft run.dir=/lustre/runs/405b &
STEP=$!
# wait returns early when a trapped signal arrives: wait again until the step has ended
while wait "$STEP"; RC=$?; kill -0 "$STEP" 2>/dev/null; do :; done
# a trainer that saved and stopped before its time limit (run.time_limit) leaves STOPPED_BEFORE_TIME_LIMIT
if [ -f /lustre/runs/405b/STOPPED_BEFORE_TIME_LIMIT ]; then rm -f /lustre/runs/405b/STOPPED_BEFORE_TIME_LIMIT; REQUEUE=1; fi
if [ "$REQUEUE" = 1 ] && [ "$RC" = 0 ]; then
  if [ "$RESTART" -lt 3 ]; then
    echo "[tulu-launch] requeueing job $SLURM_JOB_ID (restart $((RESTART + 1)))"
    scontrol requeue "$SLURM_JOB_ID"
  else
    echo "[tulu-launch] not requeued: launcher.max_restarts=3 reached"
  fi
fi
exit "$RC"
"""


def render(args, **kw):
    cfg = compose(args)
    return render_sbatch(cfg, train_overrides(args, cfg.run.dir), **kw)


def test_405b_script_line_by_line():
    got = render(ARGS_405B, workdir="/workspace/tulu", python="python").splitlines()
    want = EXPECTED_405B.splitlines()
    for i, (g, w) in enumerate(zip(got, want), 1):
        assert g == w, f"line {i}: {g!r} != {w!r}"
    assert len(got) == len(want)


def test_torchrun_per_node_variant():
    text = render(["recipe=sft", "launcher=slurm", "launcher.nodes=2", "launcher.process_model=torchrun_per_node",
                   "launcher.env_profile=none", "run.dir=/r"], workdir="/w", python="/venv/bin/python")
    assert "#SBATCH --ntasks-per-node=1\n" in text and "#SBATCH --gpus-per-node=8\n" in text
    assert ("srun --kill-on-bad-exit=1 --wait=60 --nodes=2 --ntasks=2 --ntasks-per-node=1 \\\n"
            "    /venv/bin/python -m torch.distributed.run --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d "
            '--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" -m tulu_mcore.cli.train') in text
    # the workers (not torchrun, which SIGUSR1 would kill) get the time-limit warning
    assert "srun --overlap --nodes=2 --ntasks=2 --ntasks-per-node=1 bash -c 'for p in $(pgrep" in text
    assert "export NCCL" not in text


def test_the_time_limit_warning_reaches_this_jobs_trainers_only(tmp_path):
    """The torchrun_per_node SIGUSR1 helper, as rendered, run on a "node" where two jobs' trainers match
    the same command line: only the trainers of the job it runs in are signalled."""
    import shlex

    text = render(["recipe=sft", "launcher=slurm", "launcher.process_model=torchrun_per_node", "run.dir=/r"],
                  workdir="/w", python="python")
    helper = shlex.split(re.search(r"--ntasks-per-node=1 (bash -c .*)$", text, re.MULTILINE).group(1))
    trainer = ("import signal, sys, time, pathlib; "
               "signal.signal(signal.SIGUSR1, lambda *a: (pathlib.Path(sys.argv[1]).write_text('USR1'), sys.exit(0))); "
               "pathlib.Path(sys.argv[1] + '.up').touch(); time.sleep(60)")
    procs = {}
    for job in ("101", "202"):  # a trainer of this job (101) and one of another job
        script = tmp_path / "-u -m tulu_mcore.cli.train"  # what pgrep looks for in the command line
        script.write_text(trainer.replace("; ", "\n"))
        env = {**os.environ, "SLURM_JOB_ID": job}
        procs[job] = subprocess.Popen([sys.executable, str(script), str(tmp_path / job)], env=env)
    try:
        deadline = time.time() + 20
        while not all((tmp_path / f"{job}.up").exists() for job in procs) and time.time() < deadline:
            time.sleep(0.05)
        subprocess.run(helper, env={**os.environ, "SLURM_JOB_ID": "101"}, check=True, timeout=30)
        assert procs["101"].wait(timeout=20) == 0 and (tmp_path / "101").read_text() == "USR1"
        time.sleep(0.5)
        assert procs["202"].poll() is None and not (tmp_path / "202").exists()  # the other job's: untouched
    finally:
        for proc in procs.values():
            proc.kill()


@pytest.mark.parametrize("override,needle", [
    ("launcher.process_model=mpirun", "launcher.process_model='mpirun'"),
    ("launcher.env_profile=gb200", "launcher.env_profile='gb200'"),
    ("launcher.time=4h", "launcher.time='4h'"),
    ("launcher.signal_seconds=30", "launcher.signal_seconds=30"),
])
def test_bad_launcher_settings_are_refused(override, needle):
    with pytest.raises(UserError, match=needle):
        render(["recipe=sft", "launcher=slurm", override], workdir="/w", python="python")


def test_rlvr_with_vllm_engine_gets_its_own_nodes_and_srun_step():
    args = ["experiment=tulu31_8b_rlvr_grpo", "launcher=slurm", "launcher.env_profile=none", "run.dir=/r",
            "rlvr.vllm.python=/vllm/bin/python"]
    text = render(args, workdir="/w", python="/venv/bin/python")
    assert "#SBATCH --nodes=2\n" in text  # 1 trainer node + 1 engine node
    assert ('TRAIN_NODES=$(IFS=,; echo "${NODES[*]:0:1}")\nENGINE_NODES=$(IFS=,; echo "${NODES[*]:1:1}")\n'
            'ENGINE_HOST=$(node_addr "${NODES[1]}")\n') in text
    engine = text[text.index('srun --nodes=1 --ntasks=1 --ntasks-per-node=1 --nodelist="$ENGINE_NODES"'):
                  text.index("ENGINE_STEP=$!")]
    assert "/vllm/bin/python " in engine and "vllm_side/server.py --model /r/engine/model --host \"$ENGINE_HOST\"" in engine
    assert "--tp 8 --dtype bfloat16 --max-model-len 4096" in engine and engine.rstrip().endswith("2>&1 &")
    assert "--nnodes" not in engine and "--node-rank" not in engine  # one node: the engine as before
    trainer = text[text.index("srun --kill-on-bad-exit=1"):text.index("STEP=$!\n# wait")]
    assert '--nodes=1 --ntasks=8 --ntasks-per-node=8 --nodelist="$TRAIN_NODES"' in trainer
    assert trainer.rstrip().endswith("rlvr.vllm.address=$ENGINE_HOST:$ENGINE_PORT &")  # expanded by the shell
    assert text.index('kill "$ENGINE_STEP"') < text.index('exit "$RC"')
    with pytest.raises(UserError, match="rlvr.vllm.python"):
        render(args[:-1], workdir="/w", python="python")


# the 405B RL engine: 16-way TP over 2 nodes, vLLM's multiprocessing backend (no Ray), one task per node
EXPECTED_405B_ENGINE = r"""# the vLLM engine: its own srun step on the last node(s), in its own environment
NODES=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
TRAIN_NODES=$(IFS=,; echo "${NODES[*]:0:32}")
ENGINE_NODES=$(IFS=,; echo "${NODES[*]:32:2}")
ENGINE_HOST=$(node_addr "${NODES[32]}")
ENGINE_PORT=$((40000 + SLURM_JOB_ID % 20000))
export TULU_ENGINE_AUTHKEY=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
# one task per engine node, vLLM's multiprocessing backend across them (8 GPUs each, no Ray):
# task 0 on ENGINE_HOST (the master address) serves the trainers, the others run headless workers
srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --nodelist="$ENGINE_NODES" --gpus-per-node=8 --kill-on-bad-exit=1 \
    env PYTHONPATH=/side bash -c 'exec "$@" --node-rank "$SLURM_PROCID"' engine \
    /vllm/bin/python /side/server.py --model /r/engine/model --host "$ENGINE_HOST" --port "$ENGINE_PORT" --tp 16 --dtype bfloat16 --max-model-len 3072 --seed 1234 --gpu-memory-utilization 0.85 --enforce-eager --nnodes 2 --master-addr "$ENGINE_HOST" --master-port "$((ENGINE_PORT + 1))" >> /r/logs/engine-"$SLURM_JOB_ID".log 2>&1 &
ENGINE_STEP=$!
"""


def test_405b_rl_engine_spans_its_nodes_without_ray():
    from pathlib import Path

    from tulu_mcore.launch.slurm import engine_step

    cfg = compose(["experiment=tulu3_405b_rlvr_ppo", "launcher=slurm", "run.dir=/r", "rlvr.vllm.python=/vllm/bin/python"])
    got, want = engine_step(cfg, Path("/side")), EXPECTED_405B_ENGINE.splitlines()
    for i, (g, w) in enumerate(zip(got, want), 1):
        assert g == w, f"line {i}: {g!r} != {w!r}"
    assert got == [*want, ""]  # a blank line before the trainers' step


@pytest.mark.parametrize("tp,needle", [
    (15, "rlvr.vllm.tp=15 over launcher.engine_nodes=2: vLLM's multi-node engine puts tp / engine_nodes GPUs"),
    (24, "rlvr.vllm.tp=24 needs more GPUs than launcher.engine_nodes=2 x 8"),
    (12, None),  # 6 GPUs on each engine node: allowed
])
def test_engine_tp_must_split_evenly_over_the_engine_nodes(tp, needle):
    from tulu_mcore.launch.slurm import engine_step

    cfg = compose(["experiment=tulu3_405b_rlvr_ppo", "launcher=slurm", "run.dir=/r", "rlvr.vllm.python=/v",
                   f"rlvr.vllm.tp={tp}"])
    if needle is None:
        assert any("--tp 12 " in line and "--nnodes 2 " in line for line in engine_step(cfg))
    else:
        with pytest.raises(UserError, match=re.escape(needle)):
            engine_step(cfg)


# -------------------------------------------------------------- every golden script's srun arithmetic
_spec = importlib.util.spec_from_file_location("launchers_render", ROOT / "launchers" / "render.py")
golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden)


def srun_steps(text: str) -> list[str]:
    """Every srun command of a script, its continuation lines joined."""
    return [line.strip() for line in text.replace("\\\n", " ").splitlines() if re.match(r"\s*srun\s", line)]


def opt(line: str, name: str) -> str:
    found = re.findall(rf"(?:^|\s)--{name}=(\S+)", line.split(" env ")[0])
    assert len(found) == 1, f"--{name} {'missing' if not found else 'repeated'} in: {line[:200]}"
    return found[0]


@pytest.mark.parametrize("process_model", ["srun_per_rank", "torchrun_per_node"])
@pytest.mark.parametrize("experiment", golden.EXPERIMENTS)
def test_every_golden_srun_states_its_nodes_and_tasks(experiment, process_model):
    args = [*golden.launch_args(experiment), f"launcher.process_model={process_model}"]
    cfg = compose(args)
    lc = cfg.launcher
    text = render_slurm(cfg, args, portable=True)
    assert subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True, check=False).returncode == 0
    engine_nodes = lc.engine_nodes if (cfg.recipe.name.startswith("rlvr_") and cfg.rlvr.engine == "vllm") else 0
    header = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)$", text, re.MULTILINE))
    assert int(header["nodes"]) == lc.nodes + engine_nodes
    per_node = lc.ranks_per_node if process_model == "srun_per_rank" else 1
    assert int(header["ntasks-per-node"]) == per_node
    steps = srun_steps(text)
    trainers = [s for s in steps if "tulu_mcore.cli.train" in s or "pgrep" in s]  # the launch, the SIGUSR1 helper
    engines = [s for s in steps if "server.py" in s]
    assert len(trainers) == (2 if process_model == "torchrun_per_node" else 1) and len(engines) == (engine_nodes > 0)
    assert len(trainers) + len(engines) == len(steps), steps
    for step in trainers:
        nodes, tasks, tpn = (int(opt(step, k)) for k in ("nodes", "ntasks", "ntasks-per-node"))
        launch_step = "pgrep" not in step
        want_tpn = per_node if launch_step else 1  # the SIGUSR1 helper: one per trainer node
        assert (nodes, tpn, tasks) == (lc.nodes, want_tpn, lc.nodes * want_tpn), step[:200]
        assert tpn <= int(header["ntasks-per-node"]) or not launch_step
        if engine_nodes:
            assert opt(step, "nodelist") == '"$TRAIN_NODES"', step[:200]
    for step in engines:
        nodes, tasks, tpn = (int(opt(step, k)) for k in ("nodes", "ntasks", "ntasks-per-node"))
        assert (nodes, tasks, tpn) == (engine_nodes, engine_nodes, 1), step[:200]
        assert opt(step, "nodelist") == '"$ENGINE_NODES"'
        assert f'TRAIN_NODES=$(IFS=,; echo "${{NODES[*]:0:{lc.nodes}}}")' in text
        assert f'ENGINE_NODES=$(IFS=,; echo "${{NODES[*]:{lc.nodes}:{engine_nodes}}}")' in text
        assert f'ENGINE_HOST=$(node_addr "${{NODES[{lc.nodes}]}}")' in text  # the first engine node: the master
        multi = engine_nodes > 1
        assert (f"--nnodes {engine_nodes} " in step) == multi and ('--node-rank "$SLURM_PROCID"' in step) == multi
        assert f"--tp {cfg.rlvr.vllm.tp} " in step and cfg.rlvr.vllm.tp % engine_nodes == 0
    if process_model == "torchrun_per_node":
        launch = [s for s in trainers if "pgrep" not in s]
        assert len(launch) == 1 and f"--nnodes={lc.nodes} --nproc-per-node={lc.ranks_per_node}" in launch[0]
    if experiment == "tulu3_405b_rlvr_ppo":  # the case: 16-way TP on 2 engine nodes, 32 trainer nodes
        assert engine_nodes == 2 and (header["nodes"], cfg.rlvr.vllm.tp) == ("34", 16)


def test_launch_warns_when_a_job_is_too_short_for_the_run(tmp_path, capsys):
    from tulu_mcore.cli.launch import main

    main(["experiment=tulu3_405b_rlvr_ppo", "launcher=slurm", "launcher.dry_run=true", f"run.dir={tmp_path / 'r'}",
          "rlvr.vllm.python=/vllm/bin/python"])
    err = capsys.readouterr().err
    assert "161 steps x" in err and "more than launcher.max_restarts=3: raise it or launcher.time" in err
    assert "a save every 25 steps" in err
    step = float(re.search(r"161 steps x ([\d.]+) s", err).group(1))  # the plan's step: the warning's lead
    assert (f"launcher.signal_seconds=120 is shorter than a step ({step:.0f} s) and a save" in err
            and f"launcher.signal_seconds={math.ceil(step + 120)} would make the warning a second line" in err)
    main(["recipe=sft", "model=llama3_2_1b", "launcher=slurm", "launcher.dry_run=true", "train.max_steps=10",
          f"run.dir={tmp_path / 's'}", "launcher.ranks_per_node=8"])
    assert "signal_seconds" not in capsys.readouterr().err  # a 1B step is short: Slurm's warning is early enough


def test_container_paths_must_keep_their_path_inside_the_container():
    """The trainers write run.dir inside the container, the batch script reads its logs and marks outside:
    run.dir and the working directory must lie under a mount that keeps its path."""
    base = ["recipe=sft", "launcher=slurm", 'launcher.container_image="nvcr.io#nvidia/pytorch:25.01-py3"']
    ok = render([*base, "launcher.container_mounts=[/lustre:/lustre]", "run.dir=/lustre/runs/a"],
                workdir="/lustre/tulu", python="python")
    assert "--container-mounts=/lustre:/lustre --container-workdir=/lustre/tulu" in ok
    for mounts, run_dir, workdir, bad in (
            ("[/lustre:/data]", "/lustre/runs/a", "/lustre/tulu", "run.dir /lustre/runs/a"),  # moved inside
            ("[/lustre:/lustre]", "/scratch/runs/a", "/lustre/tulu", "run.dir /scratch/runs/a"),  # not mounted
            ("[/lustre:/lustre]", "/lustre/runs/a", "/home/me/tulu", "the working directory /home/me/tulu"),
            ("[]", "/lustre/runs/a", "/lustre/tulu", "run.dir /lustre/runs/a")):
        with pytest.raises(UserError, match=f"{bad} is not under a container mount that keeps its path"):
            render([*base, f"launcher.container_mounts={mounts}", f"run.dir={run_dir}"], workdir=workdir,
                   python="python")
    # a working directory inside the image (launcher.container_workdir) is the user's statement
    render([*base, "launcher.container_mounts=[/lustre:/lustre:ro]", "launcher.container_workdir=/workspace/tulu",
            "run.dir=/lustre/runs/a"], workdir="/home/me/tulu", python="python")


def test_the_engine_step_runs_in_the_container_too():
    args = ["experiment=tulu31_8b_rlvr_grpo", "launcher=slurm", "run.dir=/lustre/r",
            'launcher.container_image="nvcr.io#nvidia/pytorch:25.01-py3"', "launcher.container_mounts=[/lustre:/lustre]",
            "rlvr.vllm.python=/opt/vllm-env/bin/python"]
    text = render(args, workdir="/lustre/tulu", python="python")
    steps = srun_steps(text)
    engine = [s for s in steps if "server.py" in s]
    assert len(engine) == 1 and len([s for s in steps if "--container-image=" in s]) == 2
    assert ("--container-image='nvcr.io#nvidia/pytorch:25.01-py3' --container-mounts=/lustre:/lustre "
            "--container-workdir=/lustre/tulu") in engine[0]
