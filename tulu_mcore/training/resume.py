"""What a resumed run may change. A checkpoint records the config keys that fix the data order or what
a step means, and the LR schedule's; on resume a changed schedule applies from the resumed step (and is
logged), while a changed data-order key is refused with the difference, unless ``run.allow_changes``
names it (the data cursor then points into a differently ordered stream: steps may repeat or skip)."""

from __future__ import annotations

import json

from omegaconf import OmegaConf

from tulu_mcore.config.schema import RunConfig
from tulu_mcore.errors import UserError

# the data order and what one step is
STEP_KEYS = ("recipe.name", "train.global_batch_size", "train.micro_batch_size", "train.seq_length", "data.train",
             "data.seed", "data.shuffle", "data.max_seq_len", "data.truncate", "runtime.seed",
             "rlvr.samples_per_prompt", "rlvr.minibatches")
# applied from the resumed step on (e.g. a lower LR after a loss spike)
SCHEDULE_KEYS = ("optim.lr", "optim.min_lr", "optim.lr_schedule", "optim.warmup_ratio", "optim.schedule_steps",
                 "optim.weight_decay")


def snapshot(cfg: RunConfig) -> str:
    """The keys a checkpoint records, as JSON (plain values only: checkpoints hold no objects)."""
    conf = OmegaConf.structured(cfg)
    return json.dumps({k: OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(conf, k)}))["v"]
                       for k in STEP_KEYS + SCHEDULE_KEYS}, sort_keys=True)


def check_changes(saved: str | None, cfg: RunConfig, where: str) -> list[str]:
    """Refuse changed data-order keys not in run.allow_changes; the changed schedule keys, as log lines."""
    if saved is None:  # a checkpoint from before configs were recorded
        return []
    before, now = json.loads(saved), json.loads(snapshot(cfg))
    changed = [k for k in STEP_KEYS + SCHEDULE_KEYS if k in before and before[k] != now[k]]
    refused = [k for k in changed if k in STEP_KEYS and k not in cfg.run.allow_changes]
    if refused:
        diff = "; ".join(f"{k}: {before[k]!r} -> {now[k]!r}" for k in refused)
        raise UserError(f"{where} was trained with other settings that fix the data order or what a step is "
                        f"({diff}): resume with the old values, use a new run.dir, or accept it knowingly with "
                        f"run.allow_changes=[{','.join(refused)}]")
    return [f"{k} changed on resume: {before[k]!r} -> {now[k]!r}" + ("" if k in STEP_KEYS else ", from this step on")
            for k in changed]
