"""``tulu-train``: run a recipe with Hydra-style overrides.

    tulu-train recipe=sft model=tiny run.dir=runs/demo train.max_steps=20
    torchrun --nproc-per-node 8 -m tulu_mcore.cli.train experiment=tulu3_8b_sft run.dir=/ckpt/sft8b
"""

from __future__ import annotations

import sys

from tulu_mcore.cli.overrides import NO_RECIPE, parse
from tulu_mcore.errors import UserError, cli_errors

# recipe.name -> the module under tulu_mcore.algorithms whose run(cfg) trains it
RECIPE_MODULES = {"sft": "sft", "dpo": "dpo", "rm": "rm", "rlvr_grpo": "rlvr.grpo", "rlvr_ppo": "rlvr.ppo"}

USAGE = """\
usage: tulu-train [--print-config] KEY=VALUE | GROUP=OPTION ...

Runs a training recipe on this process's ranks (start several with torchrun or srun). The config is
composed from conf/ (a link to tulu_mcore/conf) and the overrides; impossible layouts are reported
before anything starts. Rerunning the same command with the same run.dir resumes from its latest
checkpoint; SIGTERM or SIGUSR1 saves a checkpoint and exits.

config groups (GROUP=OPTION):
{groups}
frequently used keys:
  recipe=sft|dpo|rm|rlvr_grpo|rlvr_ppo
                                 the recipe: supervised finetuning, preference tuning, reward model,
                                 RL with verifiable rewards (GRPO, or PPO with a value model)
  model.init=PATH|HUB_NAME       start from an HF directory, a tulu-convert checkpoint or an earlier run
  model.tokenizer=PATH|HUB_NAME  tokenizer (default: the one of model.init; built-in for model=tiny)
  data.train=PATH|HUB_NAME       conversations, preference pairs for dpo/rm, verifiable prompts for rlvr_*
                                 (.jsonl/.json/.parquet, hub dataset, builtin:sft-demo,
                                 builtin:preference-demo, builtin:rlvr-demo)
  dpo.loss_type=dpo|dpo_norm|ipo|simpo  dpo.beta=X  dpo.reference=cache|live   (recipe=dpo)
  rlvr.engine=megatron|vllm  rlvr.samples_per_prompt=N  rlvr.max_new_tokens=N  rlvr.beta=X
  rlvr.value_init=PATH  rlvr.async_generation=true  rlvr.vllm.python=PATH      (recipe=rlvr_*)
  parallel.tp/pp/vpp/cp=N, parallel.sp=true    the parallel layout (data parallel = the rest)
  train.global_batch_size=N      conversations (or pairs) per optimizer step
  train.seq_length=N             tokens per packed row;  train.max_steps=N  (default: train.epochs)
  optim.lr=X  loss.reduction=sum|token_mean  precision=bf16  run.dir=DIR
  --print-config                 print the composed config and exit

Every key and its meaning: tulu_mcore/config/schema.py and conf/config.yaml.
"""


def _groups() -> str:
    from tulu_mcore.config.compose import CONF_DIR

    lines = []
    for d in sorted(p for p in CONF_DIR.iterdir() if p.is_dir()):
        options = sorted(f.stem for f in d.glob("*.yaml"))
        lines.append(f"  {d.name + ':':<12} {', '.join(options)}")
    return "\n".join(lines) + "\n"


@cli_errors
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parsed = parse(argv, "tulu-train", lambda: USAGE.format(groups=_groups()), flags=("--print-config",))
    if parsed is None:
        return
    overrides, flags = parsed
    from tulu_mcore.config.compose import compose, to_yaml
    from tulu_mcore.runtime.logs import quiet_known_warnings

    quiet_known_warnings()
    cfg = compose(overrides)
    if "--print-config" in flags:
        print(to_yaml(cfg))
        return
    if cfg.recipe.name == "none":
        raise UserError(NO_RECIPE)
    if cfg.recipe.name not in RECIPE_MODULES:
        raise UserError(f"recipe.name={cfg.recipe.name!r}: choose one of {', '.join(RECIPE_MODULES)} (recipe=NAME)")
    import importlib

    importlib.import_module(f"tulu_mcore.algorithms.{RECIPE_MODULES[cfg.recipe.name]}").run(cfg)


if __name__ == "__main__":
    main()
