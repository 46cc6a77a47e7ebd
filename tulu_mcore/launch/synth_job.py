"""The Slurm batch script of ``tulu-synth VERB ... launcher=slurm``: one srun step of
``launcher.nodes x launcher.ranks_per_node`` synthesis tasks, each with its own engine on its own GPUs
(``--gpus-per-task``: the vLLM engine's tensor parallelism), each taking its share of the shards
(``SLURM_PROCID`` of ``SLURM_NTASKS``); task 0 waits for every shard and writes the final files.
Resubmitting the same script (or ``scontrol requeue``) resumes: finished shards are skipped. The
launcher keys are tulu-launch's (partition, account, time, container, env, setup, sbatch_args, ...)."""

from __future__ import annotations

import shlex
from pathlib import Path

from tulu_mcore.config.schema import LauncherConfig
from tulu_mcore.launch.slurm import (
    SUBMIT_DIR,
    _wrap,
    check,
    container_flags,
    container_paths,
    job_environment,
    site_options,
)

SYNTH_MODULE = "tulu_mcore.cli.synth"


def render_synth_sbatch(lc: LauncherConfig, verb: str, args: list[str], out: Path, *, gpus_per_task: int,
                        workdir: str | None, python: str, command_line: str = "") -> str:
    check(lc)
    container_paths(lc, out, workdir)
    q = shlex.quote
    cwd = q(workdir) if workdir else SUBMIT_DIR
    tasks = lc.nodes * lc.ranks_per_node
    h = ["#!/bin/bash"]
    if command_line:
        h.append(f"# tulu-synth {command_line}")
    h.append("# written by tulu-synth; to change it, rerun tulu-synth (launcher.dry_run=true prints it)")
    opts = [f"--job-name={lc.job_name or f'tulu-synth-{verb}-{out.name}'}", f"--nodes={lc.nodes}",
            f"--ntasks-per-node={lc.ranks_per_node}"]
    if lc.gpus:
        opts.append(f"--gpus-per-task={gpus_per_task}")
    opts += site_options(lc)
    opts += [f"--output={out / 'logs' / 'slurm-%j.out'}", "--open-mode=append"]
    if lc.singleton:
        opts.append("--dependency=singleton")
    opts += list(lc.sbatch_args)
    h += [f"#SBATCH {o}" for o in opts]
    body = ["", "set -uo pipefail", f"cd {cwd}", *job_environment(lc),  # (the megatron engine's process group)
            f'echo "[tulu-synth] job $SLURM_JOB_ID: {tasks} task(s) on $SLURM_JOB_NODELIST ($(date -Is))"',
            "# each task takes shards SLURM_PROCID, SLURM_PROCID + SLURM_NTASKS, ...; a rerun skips finished ones"]
    srun = ["srun", "--kill-on-bad-exit=0", f"--nodes={lc.nodes}", f"--ntasks={tasks}",
            f"--ntasks-per-node={lc.ranks_per_node}", *container_flags(lc, cwd)]
    cmd = [q(python), "-m", SYNTH_MODULE, q(verb)]
    body.append(" \\\n    ".join([" ".join(srun), " ".join(cmd), *_wrap([q(a) for a in args])]))
    return "\n".join(h + body) + "\n"
