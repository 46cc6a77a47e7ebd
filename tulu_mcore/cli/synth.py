"""``tulu-synth``: make training data on this project's engines, Tülu 3's way.

    tulu-synth personas personas=persona.jsonl model=/models/llama-70b-instruct out=synth/personas
    tulu-synth preferences prompts=[prompts.jsonl] policy=runs/sft pool=[/models/qwen-7b] \\
        judge.model=/models/llama-405b-instruct out=synth/prefs
    tulu-synth rlvr kind=gsm8k source=[gsm8k_train.jsonl] out=synth/rlvr_gsm8k
    torchrun --nproc-per-node 8 -m tulu_mcore.cli.synth preferences engine.kind=megatron ...

Verbs:
  personas     persona x skill templates -> problems -> solutions (math kept by majority vote over
               filters.majority_k samples, instruction following by our IFEval verifiers, duplicates
               removed) -> OUT/sft.jsonl (messages) and OUT/rlvr.jsonl (messages, ground_truth, dataset)
  preferences  prompts -> completions from the policy and the pool -> judge ratings on four aspects
               (helpfulness, instruction following, honesty, truthfulness; 1-5) -> chosen/rejected
               -> OUT/pairs.jsonl (the preference-mixture format, ratings kept)
  rlvr         GSM8K / MATH rows with answers, or prompts + a drawn IFEval constraint -> OUT/rlvr.jsonl

Each verb's config: tulu_mcore/synth/conf/<verb>.yaml, overridden by KEY=VALUE (Hydra syntax; lists as
[a,b]); --config-dir DIR reads DIR/<verb>.yaml instead; --print-config shows the result. Generation runs
on engine.kind=vllm (out of process; HF directories; $TULU_VLLM_PYTHON) or engine.kind=megatron (in
process; HF directories, tulu-convert checkpoints or run directories; one whole model per rank).

Resumable: work is cut into shards of shard_size items, each written whole; rerunning the same command
skips the finished shards (a killed run loses only the shards in flight). Several tasks share a run:
Slurm tasks (srun -n T: SLURM_PROCID / SLURM_NTASKS), torchrun ranks, or task=i tasks=T; task 0 waits
for all shards and writes the final files. launcher.name=slurm writes OUT/synth.sbatch and submits it:
launcher.nodes x launcher.ranks_per_node tasks, each with its own engine on engine.vllm.tp GPUs (with
tulu-launch's partition, account, time, container_*, env, setup, sbatch_args, ... keys;
launcher.dry_run=true prints the script). Every final file first passes tulu-decontam against
decontam.eval (default preset:tulu3; decontam.enabled=false skips it); OUT/report.json and report.md
count what each filter, the judge and decontamination removed, and the throughput of each stage.
"""

from __future__ import annotations

import sys

from tulu_mcore.errors import UserError, cli_errors


@cli_errors
def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    from tulu_mcore.synth.config import VERBS, compose

    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        raise UserError(f"tulu-synth: unknown verb {verb!r}: one of {', '.join(VERBS)} (--help explains them)")
    config_dir, show, overrides = None, False, []
    i = 0
    while i < len(rest):
        a = rest[i]
        if a in ("-h", "--help"):
            print(__doc__)
            return
        if a == "--print-config":
            show = True
        elif a == "--config-dir" and i + 1 < len(rest):
            config_dir, i = rest[i + 1], i + 1
        elif a.startswith("--config-dir="):
            config_dir = a.split("=", 1)[1]
        elif a.startswith("-"):
            raise UserError(f"tulu-synth: unknown option {a!r} (--help)")
        else:
            overrides.append(a)
        i += 1
    cfg = compose(verb, overrides, config_dir)
    if show:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        return
    if cfg.launcher.name == "slurm":
        _submit(cfg, verb, overrides, config_dir, argv)
        return
    from tulu_mcore.runtime.logs import quiet_known_warnings

    quiet_known_warnings()
    import importlib

    module = importlib.import_module(f"tulu_mcore.synth.{verb}")
    module.run(cfg, log=lambda m: print(f"[tulu-synth {verb}] {m}", flush=True))


def _submit(cfg, verb: str, overrides: list[str], config_dir: str | None, argv: list[str]) -> None:
    """launcher.name=slurm: OUT/synth.sbatch (owner-only: launcher.env may hold secrets), submitted."""
    import shlex
    from pathlib import Path

    from tulu_mcore.cli.launch import submit_job
    from tulu_mcore.launch.synth_job import render_synth_sbatch

    out = Path(cfg.out).absolute()
    lc = cfg.launcher
    # the job's tasks run here (launcher.name=local, whatever a --config-dir file says) and take their
    # task number from Slurm
    args = [a for a in overrides
            if a.lstrip("+~").split("=", 1)[0].split(".")[0] not in ("launcher", "out", "task", "tasks")]
    args += [f"out={out}", "launcher.name=local"]
    args += [f"--config-dir={Path(config_dir).absolute()}"] if config_dir else []
    gpus = cfg.engine.vllm.tp if cfg.engine.kind == "vllm" else 1
    script = render_synth_sbatch(lc, verb, args, out, gpus_per_task=gpus, workdir=str(Path.cwd()),
                                 python=lc.python or ("python" if lc.container_image else sys.executable),
                                 command_line=" ".join(shlex.quote(a) for a in argv))
    if lc.dry_run:
        print(script, end="")
        return
    submit_job(out / "synth.sbatch", script, f"{lc.nodes} node(s) x {lc.ranks_per_node} task(s)")


if __name__ == "__main__":
    main()
