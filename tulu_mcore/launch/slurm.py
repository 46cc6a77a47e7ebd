"""The Slurm batch script ``tulu-launch launcher=slurm`` writes, and its submission.

The script is what one would write by hand for a Megatron job on H100 nodes: an ``#SBATCH`` header
(nodes, ranks and GPUs per node, partition, account, time, logs appended across restarts, the
time-limit warning, requeue, optional singleton chain), the NCCL environment, the master address from
the allocation and a port from the job id, then one ``srun``: a task per GPU running ``tulu-train``
(megatron-core reads the ranks from Slurm's variables), or a ``torchrun`` per node. Every ``srun`` states
its nodes and tasks (``--nodes``, ``--ntasks``, ``--ntasks-per-node``): a step never inherits the whole
allocation's. Container flags (pyxis) go on ``srun``, never on ``#SBATCH``.

RL with the vLLM engine (``rlvr.engine=vllm``, ``launcher.engine_nodes`` > 0): the allocation has
``launcher.engine_nodes`` more nodes, the last ones; the engine server (``rlvr.vllm.python``, vLLM's own
environment) runs as its own srun step there, one task per engine node, and the trainers (on the first
``launcher.nodes``, ``--nodelist``) connect to it (``rlvr.vllm.address``, a per-job key in
``TULU_ENGINE_AUTHKEY``). No Ray: an engine over several nodes is vLLM's multiprocessing backend
(``--nnodes``, ``--node-rank`` from ``SLURM_PROCID``, ``--master-addr`` the first engine node): the task
on that node serves the trainers, the others run vLLM's headless workers.

Preemption and time limits: Slurm sends SIGUSR1 to the batch shell ``launcher.signal_seconds`` before
the limit. The script passes it to the trainers, which finish their step, checkpoint and exit 0; then
it requeues the job (up to ``launcher.max_restarts`` times), which resumes from that checkpoint: the
data order is a function of the step, so nothing is repeated or skipped. SIGTERM (preemption,
``scancel``) reaches the trainers from Slurm directly: they checkpoint and exit; the script does not
requeue then (a preempting cluster requeues by itself).

A script to keep and submit from the checkout (``launchers/slurm/``): ``workdir=None``; the job then
works in ``$SLURM_SUBMIT_DIR`` and the engine step names its files relative to it, so the script holds
no path of the machine that rendered it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

from tulu_mcore.config.durations import parse_duration
from tulu_mcore.config.schema import LauncherConfig, RunConfig
from tulu_mcore.errors import UserError
from tulu_mcore.launch.engine import ENGINE_DIR, SIDE_DIR, server_args

# Settings the H100 + InfiniBand stacks (Megatron-LM, Megatron-Bridge, NeMo) set for training; fabric
# specifics (NCCL_IB_HCA, NCCL_SOCKET_IFNAME, NCCL_IB_GID_INDEX on RoCE) belong in launcher.env.
ENV_PROFILES: dict[str, dict[str, str]] = {
    "none": {},
    "h100_ib": {
        "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",
        "NCCL_NVLS_ENABLE": "0",
        "NCCL_IB_TIMEOUT": "19",
        "NCCL_IB_QPS_PER_CONNECTION": "4",
        "NCCL_P2P_NET_CHUNKSIZE": "2097152",
        "NCCL_DEBUG": "WARN",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        # UCX is used only by UCC/NIXL transports (not by NCCL collectives)
        "UCX_TLS": "rc,cuda_copy,cuda_ipc,self,sm",
        "UCX_MEMTYPE_CACHE": "n",
        "UCX_WARN_UNUSED_ENV_VARS": "n",
    },
}
PROCESS_MODELS = ("srun_per_rank", "torchrun_per_node")
TRAIN_MODULE = "tulu_mcore.cli.train"
# SIGUSR1 to the trainer processes on this node that belong to this Slurm job. "[-]u" matches "-u" but
# not itself: the helper's own command line (and srun's) holds the pattern and must not match it
SIGNAL_THIS_JOBS_TRAINERS = ('for p in $(pgrep -u "$(id -u)" -f -- "[-]u -m ' + TRAIN_MODULE.replace(".", "[.]")
                             + '"); do grep -qsxz "SLURM_JOB_ID=$SLURM_JOB_ID" /proc/$p/environ && kill -USR1 $p; '
                             'done; true')
TIME_LIMIT_MARK = "STOPPED_BEFORE_TIME_LIMIT"  # in run.dir: the trainer saved and stopped in time; requeue
SUBMIT_DIR = '"$SLURM_SUBMIT_DIR"'  # the working directory of a script rendered with workdir=None


def check(lc: LauncherConfig) -> None:
    problems = []
    if lc.process_model not in PROCESS_MODELS:
        problems.append(f"launcher.process_model={lc.process_model!r}: choose {' or '.join(PROCESS_MODELS)}")
    if lc.env_profile not in ENV_PROFILES:
        problems.append(f"launcher.env_profile={lc.env_profile!r}: choose one of {sorted(ENV_PROFILES)}")
    if lc.nodes < 1 or lc.ranks_per_node < 1:
        problems.append("launcher.nodes and launcher.ranks_per_node must be >= 1")
    try:
        parse_duration(lc.time, "launcher.time", slurm=True)  # the reading tulu-plan sizes the jobs with
    except UserError as e:
        problems.append(f"{e} (Slurm's format, e.g. 04:00:00 or 2-00:00:00; a bare number is minutes)")
    if lc.signal_seconds < 60:
        problems.append(f"launcher.signal_seconds={lc.signal_seconds}: Slurm may signal up to 60 s early; use >= 60 "
                        "(and enough to save a checkpoint)")
    if problems:
        raise UserError("\n".join(problems))


def container_paths(lc: LauncherConfig, run_dir: Path, workdir: str | None) -> None:
    """With a container, the trainers write run.dir inside it and the batch script (outside) reads its
    logs and marks there, and the job works in `workdir` both inside and out: each must lie under a
    mount that keeps its path (``/lustre:/lustre``), else the two sides see different directories."""
    if not lc.container_image:
        return
    same = []
    for m in lc.container_mounts:
        src, _, rest = str(m).partition(":")
        dst = rest.split(":")[0] if rest else src
        if src == dst and src.startswith("/"):
            same.append(Path(src))
    where = {"run.dir": run_dir} if run_dir.is_absolute() else {}
    if workdir and not lc.container_workdir:
        where["the working directory"] = Path(workdir)
    problems = [f"{what} {path} is not under a container mount that keeps its path"
                for what, path in where.items() if not any(path == m or m in path.parents for m in same)]
    if problems:
        raise UserError("; ".join(problems) + f" (launcher.container_mounts={list(lc.container_mounts)}): inside "
                        "the container it would be another directory than the batch script sees; add the "
                        "file system as 'SRC:SRC', e.g. launcher.container_mounts=[/lustre:/lustre]")


def container_flags(lc: LauncherConfig, cwd: str) -> list[str]:
    """pyxis options of an srun step (trainers and engine alike) for launcher.container_*."""
    if not lc.container_image:
        return []
    q = shlex.quote
    flags = [f"--container-image={q(lc.container_image)}"]
    if lc.container_mounts:
        flags.append(f"--container-mounts={q(','.join(lc.container_mounts))}")
    flags.append(f"--container-workdir={q(lc.container_workdir) if lc.container_workdir else cwd}")
    return flags


def job_name(cfg: RunConfig) -> str:
    return cfg.launcher.job_name or f"tulu-{cfg.recipe.name}-{Path(cfg.run.dir).name}"


def site_options(lc: LauncherConfig) -> list[str]:
    """The #SBATCH options every job of this project takes from the launcher section as they are."""
    opts = [f"--cpus-per-task={lc.cpus_per_task}"] if lc.cpus_per_task else []
    opts += [f"--partition={lc.partition}"] if lc.partition else []
    opts += [f"--account={lc.account}"] if lc.account else []
    opts.append(f"--time={lc.time}")
    return opts + (["--exclusive"] if lc.exclusive else [])


def job_environment(lc: LauncherConfig) -> list[str]:
    """A job's first lines after `cd`: launcher.setup, the environment, and the master address and port
    of the allocation (for the ranks' process group)."""
    env = {**ENV_PROFILES[lc.env_profile], **{str(k): str(v) for k, v in lc.env.items()}}
    return [*lc.setup, *(f"export {k}={shlex.quote(v)}" for k, v in env.items()),
            "# a node's address as Slurm reaches it (NodeAddr; its name where Slurm has none): names need not resolve",
            "node_addr() { local a; a=$(scontrol show node \"$1\" 2>/dev/null | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2); "
            'echo "${a:-$1}"; }',
            'export MASTER_ADDR=$(node_addr "$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)")',
            "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))"]


def write_private(path: Path, text: str) -> None:
    """A batch script, owner-only: launcher.env values (tokens, keys) are written into it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)  # an older file kept its mode


def render_sbatch(cfg: RunConfig, train_args: list[str], *, workdir: str | None, python: str,
                  command_line: str = "") -> str:
    """The batch script for `cfg.launcher`, running ``tulu-train`` with `train_args` in `workdir`
    (None: the directory the job was submitted from, a checkout of this repository)."""
    lc = cfg.launcher
    check(lc)
    run_dir = Path(cfg.run.dir)
    container_paths(lc, run_dir, workdir)
    per_node = lc.ranks_per_node if lc.process_model == "srun_per_rank" else 1
    q = shlex.quote
    cwd = q(workdir) if workdir else SUBMIT_DIR
    h = ["#!/bin/bash"]
    if command_line:
        h.append(f"# tulu-launch {command_line}")
    h.append("# written by tulu-launch; to change it, rerun tulu-launch (launcher.dry_run=true prints it)")
    # a portable script (workdir=None) finds the engine's files in the checkout it was submitted from
    engine = engine_step(cfg, SIDE_DIR if workdir else SIDE_DIR.relative_to(SIDE_DIR.parents[2]), cwd)
    opts = [f"--job-name={job_name(cfg)}", f"--nodes={lc.nodes + (lc.engine_nodes if engine else 0)}",
            f"--ntasks-per-node={per_node}"]
    if lc.gpus:
        opts.append(f"--gpus-per-node={lc.ranks_per_node}")
    opts += site_options(lc)
    opts += [f"--output={run_dir / 'logs' / 'slurm-%j.out'}", "--open-mode=append",
             f"--signal=B:USR1@{lc.signal_seconds}", "--requeue"]
    if lc.singleton:
        opts.append("--dependency=singleton")
    opts += list(lc.sbatch_args)
    h += [f"#SBATCH {o}" for o in opts]
    body = ["", "set -uo pipefail", f"cd {cwd}", *job_environment(lc)]
    body += [
        "RESTART=${SLURM_RESTART_COUNT:-0}",
        'echo "[tulu-launch] job $SLURM_JOB_ID restart $RESTART on $SLURM_JOB_NODELIST ($(date -Is))"',
        "",
        "# SIGUSR1 before the time limit: the trainers checkpoint and exit, then the job requeues itself",
        "REQUEUE=0",
        "on_usr1() {",
        '  REQUEUE=1; echo "[tulu-launch] time-limit warning: checkpointing"',
    ]
    if lc.process_model == "srun_per_rank":
        body.append('  kill -USR1 "$STEP" 2>/dev/null  # srun passes it to every task')
    else:  # torchrun would die of SIGUSR1: signal its workers (started as `python -u -m ...`) directly,
        # this job's only (a shared node may run other jobs' trainers): their environment names the job
        nodelist = ' --nodelist="$TRAIN_NODES"' if engine else ""
        body.append(f"  srun --overlap --nodes={lc.nodes} --ntasks={lc.nodes} --ntasks-per-node=1{nodelist} "
                    f"bash -c {q(SIGNAL_THIS_JOBS_TRAINERS)}")
    body += ["}", "trap on_usr1 USR1", ""]
    # the trainers' step: their nodes and tasks only (never the engine's nodes)
    srun = ["srun", "--kill-on-bad-exit=1", "--wait=60", f"--nodes={lc.nodes}", f"--ntasks={lc.nodes * per_node}",
            f"--ntasks-per-node={per_node}"]
    if engine:
        body += engine
        srun.append('--nodelist="$TRAIN_NODES"')
        train_args = [*train_args, "rlvr.vllm.address=$ENGINE_HOST:$ENGINE_PORT"]
    srun += container_flags(lc, cwd)
    if lc.process_model == "srun_per_rank":
        cmd = [q(python), "-m", TRAIN_MODULE]
    else:
        cmd = [q(python), "-m", "torch.distributed.run", f"--nnodes={lc.nodes}",
               f"--nproc-per-node={lc.ranks_per_node}", "--rdzv-backend=c10d",
               '--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"', '--rdzv-id="$SLURM_JOB_ID"', "-m", TRAIN_MODULE]
    args = [a if a.startswith("rlvr.vllm.address=$") else q(a) for a in train_args]
    body.append(" \\\n    ".join([" ".join(srun), " ".join(cmd), *_wrap(args)]) + " &")
    body += [
        "STEP=$!",
        "# wait returns early when a trapped signal arrives: wait again until the step has ended",
        'while wait "$STEP"; RC=$?; kill -0 "$STEP" 2>/dev/null; do :; done',
        f"# a trainer that saved and stopped before its time limit (run.time_limit) leaves {TIME_LIMIT_MARK}",
        f'if [ -f {q(str(run_dir / TIME_LIMIT_MARK))} ]; then rm -f {q(str(run_dir / TIME_LIMIT_MARK))}; REQUEUE=1; fi',
        'if [ "$REQUEUE" = 1 ] && [ "$RC" = 0 ]; then',
        f'  if [ "$RESTART" -lt {lc.max_restarts} ]; then',
        '    echo "[tulu-launch] requeueing job $SLURM_JOB_ID (restart $((RESTART + 1)))"',
        '    scontrol requeue "$SLURM_JOB_ID"',
        "  else",
        f'    echo "[tulu-launch] not requeued: launcher.max_restarts={lc.max_restarts} reached"',
        "  fi",
        "fi",
        'exit "$RC"',
    ]
    if engine:
        body.insert(len(body) - 1, 'kill "$ENGINE_STEP" 2>/dev/null  # the engine serves this job only')
    return "\n".join(h + body) + "\n"


def engine_step(cfg: RunConfig, side_dir: Path = SIDE_DIR, workdir: str = SUBMIT_DIR) -> list[str]:
    """The script lines that start the vLLM engine on its own nodes (none when the run has no such
    engine); `side_dir`: the engine's files (``rollout/vllm_side``) as the job finds them.

    One srun task per engine node. On several nodes the engine is vLLM's multiprocessing backend
    (``ParallelConfig.nnodes``/``node_rank``/``master_addr``/``master_port``; Ray is not used): every task
    runs the same server command with ``--node-rank $SLURM_PROCID``; rank 0, on the first engine node
    (``ENGINE_HOST``, the master address), serves the trainers, the others run headless workers."""
    lc, r = cfg.launcher, cfg.rlvr
    if not (cfg.recipe.name.startswith("rlvr_") and r.engine == "vllm" and lc.engine_nodes > 0):
        return []
    if not r.vllm.python:
        raise UserError("launcher.engine_nodes: set rlvr.vllm.python to the vLLM environment's interpreter on the "
                        "nodes (the engine runs in its own environment)")
    n = lc.engine_nodes
    if r.vllm.tp > n * lc.ranks_per_node:
        raise UserError(f"rlvr.vllm.tp={r.vllm.tp} needs more GPUs than launcher.engine_nodes={n} x "
                        f"{lc.ranks_per_node} give")
    if r.vllm.tp % n:
        raise UserError(f"rlvr.vllm.tp={r.vllm.tp} over launcher.engine_nodes={n}: vLLM's multi-node engine puts "
                        f"tp / engine_nodes GPUs on each node; use a tp divisible by {n}, or fewer engine nodes")
    q = shlex.quote
    model_dir = Path(cfg.run.dir) / ENGINE_DIR / "model"  # written by tulu-launch (write_engine_config)
    # bound to the engine node's address the trainers dial, not to every interface
    server = [q(r.vllm.python), q(str(side_dir / "server.py")), "--model", q(str(model_dir)), '--host "$ENGINE_HOST"',
              '--port "$ENGINE_PORT"', *map(q, server_args(cfg))]
    gpus = f" --gpus-per-node={lc.ranks_per_node}" if lc.gpus else ""
    lines = [
        "# the vLLM engine: its own srun step on the last node(s), in its own environment",
        'NODES=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))',
        f'TRAIN_NODES=$(IFS=,; echo "${{NODES[*]:0:{lc.nodes}}}")',
        f'ENGINE_NODES=$(IFS=,; echo "${{NODES[*]:{lc.nodes}:{n}}}")',
        f'ENGINE_HOST=$(node_addr "${{NODES[{lc.nodes}]}}")',
        "ENGINE_PORT=$((40000 + SLURM_JOB_ID % 20000))",
        "export TULU_ENGINE_AUTHKEY=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n')",
    ]
    start = " ".join(["env", f"PYTHONPATH={q(str(side_dir))}", *(f"{k}={q(str(v))}" for k, v in r.vllm.env.items())])
    if n > 1:
        lines += [(f"# one task per engine node, vLLM's multiprocessing backend across them ({r.vllm.tp // n} GPUs "
                   "each, no Ray):"),
                  "# task 0 on ENGINE_HOST (the master address) serves the trainers, the others run headless workers"]
        start += " bash -c 'exec \"$@\" --node-rank \"$SLURM_PROCID\"' engine"
        server += ["--nnodes", str(n), '--master-addr "$ENGINE_HOST"', '--master-port "$((ENGINE_PORT + 1))"']
    command = " ".join(server) + f' >> {q(str(Path(cfg.run.dir) / "logs"))}/engine-"$SLURM_JOB_ID".log 2>&1 &'
    container = "".join(f" {f}" for f in container_flags(lc, workdir))  # the same image holds /opt/vllm-env
    srun = (f'srun --nodes={n} --ntasks={n} --ntasks-per-node=1 --nodelist="$ENGINE_NODES"{gpus}{container} '
            '--kill-on-bad-exit=1 \\')
    step = [f"    {start} \\", f"    {command}"] if n > 1 else [f"    {start} {command}"]
    return [*lines, srun, *step, "ENGINE_STEP=$!", ""]


def _wrap(args: list[str], width: int = 100) -> list[str]:
    """Arguments joined into lines of about `width` characters."""
    lines, cur = [], ""
    for a in args:
        if cur and len(cur) + 1 + len(a) > width:
            lines.append(cur)
            cur = a
        else:
            cur = f"{cur} {a}" if cur else a
    return lines + ([cur] if cur else [])


def submit(script: Path) -> str:
    """sbatch the script; the job id. Clear errors for a missing sbatch or an unreachable controller."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise UserError("sbatch is not on PATH: run tulu-launch launcher=slurm on a Slurm login node (or with "
                        "the Slurm client installed), or use launcher.dry_run=true to see the script")
    try:
        proc = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise UserError("sbatch did not answer in 120 s: is the Slurm controller reachable?") from None
    if proc.returncode != 0:
        msg = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise UserError(f"sbatch {script} failed: {msg[-1] if msg else f'exit {proc.returncode}'}")
    return proc.stdout.strip().split(";")[0]
