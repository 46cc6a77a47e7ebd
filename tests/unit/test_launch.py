"""The Slurm batch script tulu-launch renders: the 405B job line by line, the torchrun-per-node variant,
and refused launcher settings."""

import pytest

from tulu_mcore.cli.launch import train_overrides
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
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
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

srun --kill-on-bad-exit=1 --wait=60 --container-image='nvcr.io#nvidia/pytorch:25.01-py3' --container-mounts=/lustre:/lustre --container-workdir=/workspace/tulu \
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
    assert ("srun --kill-on-bad-exit=1 --wait=60 --ntasks-per-node=1 \\\n    /venv/bin/python -m torch.distributed.run "
            "--nnodes=$SLURM_NNODES --nproc-per-node=8 --rdzv-backend=c10d "
            '--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" -m tulu_mcore.cli.train') in text
    # the workers (not torchrun, which SIGUSR1 would kill) get the time-limit warning
    assert "pkill -USR1 -f -- '-u -m tulu_mcore.cli.train'" in text
    assert "export NCCL" not in text


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
    assert 'TRAIN_NODES=$(IFS=,; echo "${NODES[*]:0:1}")\nENGINE_HOST=${NODES[1]}\n' in text
    engine = text[text.index('srun --nodes=1 --ntasks=1 --nodelist="$ENGINE_HOST"'):text.index("ENGINE_STEP=$!")]
    assert "/vllm/bin/python " in engine and "vllm_side/server.py --model /r/engine/model --host 0.0.0.0" in engine
    assert "--tp 8 --dtype bfloat16 --max-model-len 4096" in engine and engine.rstrip().endswith("2>&1 &")
    trainer = text[text.index("srun --kill-on-bad-exit=1"):text.index("STEP=$!\n# wait")]
    assert '--nodes=1 --nodelist="$TRAIN_NODES"' in trainer
    assert trainer.rstrip().endswith("rlvr.vllm.address=$ENGINE_HOST:$ENGINE_PORT &")  # expanded by the shell
    assert text.index('kill "$ENGINE_STEP"') < text.index('exit "$RC"')
    with pytest.raises(UserError, match="rlvr.vllm.python"):
        render(args[:-1], workdir="/w", python="python")
