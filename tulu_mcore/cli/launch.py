"""``tulu-launch``: start a ``tulu-train`` run here (torchrun) or as a Slurm batch job.

    tulu-launch recipe=sft launcher.ranks_per_node=2                      # torchrun on this machine
    tulu-launch experiment=tulu3_8b_sft launcher=slurm launcher.partition=batch launcher.account=proj
    tulu-launch experiment=tulu3_405b_sft launcher=slurm launcher.nodes=32 launcher.dry_run=true
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from tulu_mcore.cli.overrides import NO_RECIPE, parse
from tulu_mcore.errors import UserError, cli_errors

USAGE = """\
usage: tulu-launch [GROUP=OPTION ...] [KEY=VALUE ...]

Takes tulu-train's overrides plus the launcher section. The config is composed and the layout checked
for launcher.nodes x launcher.ranks_per_node ranks before anything starts or is submitted.

  launcher=local     torchrun with launcher.ranks_per_node ranks on this machine (one node)
  launcher=slurm     writes run.dir/job.sbatch and submits it with sbatch; prints the job id
                     (launcher.dry_run=true: prints the script, submits nothing)

launcher keys (all in conf/config.yaml): nodes, ranks_per_node (one per GPU), gpus, process_model
(srun_per_rank | torchrun_per_node), partition, account, time, job_name, exclusive, cpus_per_task,
container_image, container_mounts, container_workdir (pyxis), env_profile (h100_ib | none), env,
signal_seconds (SIGUSR1 before the limit: checkpoint + requeue), max_restarts, singleton, sbatch_args,
python, setup. Logs: run.dir/logs/slurm-<job id>.out, appended across restarts.
"""


def train_overrides(argv: list[str], run_dir: Path) -> list[str]:
    """The overrides tulu-train gets: the user's, without the launcher's, with run.dir made absolute."""
    def key(a: str) -> str:
        return a.lstrip("+~").split("=", 1)[0]

    out = [a for a in argv if not (key(a) == "launcher" or key(a).startswith("launcher.") or key(a) == "run.dir")]
    return out + [f"run.dir={run_dir}"]


def render_slurm(cfg, argv: list[str], *, portable: bool = False) -> str:
    """The batch script of ``tulu-launch launcher=slurm`` for `argv` (composed into `cfg`), after the
    layout and memory checks. `portable`: a script kept in the repository and submitted from a checkout
    (launchers/render.py): it works in $SLURM_SUBMIT_DIR with run.dir as configured (relative to that
    directory) and runs `python` unless launcher.python says otherwise; no path of this machine."""
    from tulu_mcore.config.validate import validate
    from tulu_mcore.launch.slurm import render_sbatch

    lc = cfg.launcher
    world = lc.nodes * lc.ranks_per_node
    # the job's nodes are not this one: GPUs (and Transformer Engine in their image) are assumed there
    if lc.gpus:
        from tulu_mcore.plan import plan_for

        cfg.plan.gpus = world
        plan = plan_for(cfg)  # the layout checks, then memory: refuse before anything is submitted
        if not plan.fits:
            raise UserError(f"tulu-plan: this run needs {plan.peak_gib:.1f} GiB per GPU, more than "
                            f"plan.gpu_memory_gib={plan.capacity_gib:g}; " + "; ".join(plan.advice[:-1])
                            + " (details: tulu-plan with the same overrides)")
        from tulu_mcore.plan import run_length

        for line in run_length(plan, cfg):  # a step or a save interval longer than the job; the jobs it takes
            if line.startswith(("warning", "note")) or "max_restarts" in line:
                print(f"tulu-launch: {line}", file=sys.stderr)
    else:
        validate(cfg, world, device="cpu")
    return render_sbatch(cfg, train_overrides(argv, Path(cfg.run.dir)),
                         workdir=None if portable else str(Path.cwd()),
                         python=lc.python or ("python" if lc.container_image or portable else sys.executable),
                         command_line=" ".join(shlex.quote(a) for a in argv))


def submit_job(path: Path, script: str, what: str) -> str:
    """Write the batch script (owner-only) beside its logs/ and submit it; print the job id last (what
    scripts read)."""
    from tulu_mcore.launch.slurm import submit, write_private

    (path.parent / "logs").mkdir(parents=True, exist_ok=True)
    write_private(path, script)
    job = submit(path)
    print(f"submitted job {job} ({what}): {path}")
    print(f"log: {path.parent / 'logs' / f'slurm-{job}.out'}")
    print(job)
    return job


def policy_arch(cfg):
    """The architecture the trainers will build: model.init's when it is here (a checkpoint or a Hugging
    Face directory on a shared file system), else the model group's."""
    if cfg.model.init and Path(cfg.model.init).exists():
        from tulu_mcore.training.init import resolve_init

        return resolve_init(cfg.model).arch
    return cfg.model.arch


@cli_errors
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parsed = parse(argv, "tulu-launch", USAGE)
    if parsed is None:
        return
    argv = parsed[0]
    from tulu_mcore.config.compose import compose
    from tulu_mcore.config.validate import validate
    from tulu_mcore.runtime.logs import quiet_known_warnings

    quiet_known_warnings()
    cfg = compose(argv)
    lc = cfg.launcher
    if cfg.recipe.name == "none":
        raise UserError(NO_RECIPE)
    run_dir = Path(cfg.run.dir).absolute()
    cfg.run.dir = str(run_dir)
    world = lc.nodes * lc.ranks_per_node
    if lc.name == "local":
        if lc.nodes != 1:
            raise UserError(f"launcher=local runs on this machine: launcher.nodes={lc.nodes} needs launcher=slurm")
        import torch

        device = cfg.runtime.device if cfg.runtime.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        validate(cfg, world, device=device)
        from tulu_mcore.runtime.launch import torchrun

        proc = torchrun("tulu_mcore.cli.train", train_overrides(argv, run_dir), nproc=lc.ranks_per_node)
        raise SystemExit(proc.returncode)
    if lc.name != "slurm":
        raise UserError(f"launcher={lc.name}: choose launcher=local or launcher=slurm")
    from tulu_mcore.launch.slurm import engine_step, job_name

    script = render_slurm(cfg, argv)
    if lc.dry_run:
        print(script, end="")
        return
    if engine_step(cfg):  # the engine starts from the policy's config.json; the trainer pushes the weights
        from tulu_mcore.launch.engine import write_engine_config

        write_engine_config(run_dir, policy_arch(cfg), cfg.precision.params_dtype)
    submit_job(run_dir / "job.sbatch", script, f"{job_name(cfg)}, {lc.nodes} node(s) x {lc.ranks_per_node} ranks")


if __name__ == "__main__":
    main()
