"""The verifiable prompts of an RLVR run (loaded, tokenized, checked against the row length), and which
of them each step takes: a seeded permutation per epoch, in slices of ``train.global_batch_size``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tulu_mcore.config.schema import RunConfig
from tulu_mcore.data.cache import fingerprint
from tulu_mcore.data.rlvr import Prompt, encode_prompts, load_prompts
from tulu_mcore.data.sources import source_fingerprint, source_specs
from tulu_mcore.data.tokenizer import tokenizer_fingerprint
from tulu_mcore.errors import UserError


@dataclass
class RlvrData:
    prompts: list[Prompt]
    ids: list[np.ndarray]  # the prompts' token ids (chat template + generation prompt)
    key: str  # identifies data + tokenizer (a resumed run must see the same)
    steps_per_epoch: int
    per_step: int  # prompts per step, all data-parallel ranks together
    seed: int  # of the epoch permutations

    def cursor(self, steps_done: int) -> dict:
        """The data position saved with a checkpoint after `steps_done` steps (the epoch of the last)."""
        return {"step": steps_done, "epoch": max(steps_done - 1, 0) // self.steps_per_epoch}

    def step_prompts(self, step: int) -> tuple[int, list[int]]:
        """(epoch, the indices of the prompts of `step`)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng(self.seed + epoch).permutation(len(self.prompts))
        return epoch, [int(i) for i in order[k * self.per_step:(k + 1) * self.per_step]]


def load_rlvr_data(cfg: RunConfig, tokenizer, log, dp_size: int) -> RlvrData:
    per_step, r = cfg.train.global_batch_size, cfg.rlvr
    if per_step % dp_size:
        raise UserError(f"train.global_batch_size={per_step} prompts must divide over {dp_size} data-parallel ranks")
    parts = r.minibatches if cfg.recipe.name == "rlvr_grpo" else 1
    if per_step % (dp_size * parts):
        raise UserError(f"train.global_batch_size={per_step} prompts must divide into rlvr.minibatches={parts} "
                        f"parts on each of {dp_size} data-parallel ranks")
    per_update = per_step // dp_size * r.samples_per_prompt // max(parts, 1)  # sequences per rank per update
    if r.loss_aggregation == "group_token_mean" and per_update % r.loss_group_size:
        raise UserError(f"rlvr.loss_aggregation=group_token_mean: each data-parallel rank's {per_update} sequences "
                        f"per optimizer step must split into groups of rlvr.loss_group_size={r.loss_group_size} "
                        "(the same groups at every layout); change train.global_batch_size or the group size")
    specs = source_specs(cfg.data.train)
    prompts, ids = read_prompts(cfg, specs, tokenizer, log, "data")
    limit = cfg.rlvr.max_prompt_tokens
    steps_per_epoch = len(prompts) // per_step
    if steps_per_epoch == 0:
        raise UserError(f"{len(prompts)} prompts: fewer than one step's train.global_batch_size={per_step}")
    check_fit(cfg, ids, cfg.rlvr.max_new_tokens, "rlvr.max_new_tokens")
    key = fingerprint({"kind": "rlvr", "sources": [source_fingerprint(s) for s in specs],
                       "tokenizer": tokenizer_fingerprint(tokenizer),
                       **({"max_prompt_tokens": limit} if limit is not None else {}),  # it changes the prompts
                       # prompts with an earlier assistant turn: rendered with its EOS since format 2
                       **({"prompt_format": 2} if any(m["role"] == "assistant" for p in prompts for m in p.messages)
                          else {})})
    return RlvrData(prompts, ids, key, steps_per_epoch, per_step, cfg.data.seed)


def read_prompts(cfg: RunConfig, specs, tokenizer, log, what: str) -> tuple[list[Prompt], list[np.ndarray]]:
    """The prompts of `specs` and their ids, loaded and reported as data.* says, without those longer than
    rlvr.max_prompt_tokens (as Tülu's dataset filter: dropped, not an error)."""
    loaded = load_prompts(specs, on_error=cfg.data.on_error, seed=cfg.data.seed, unverifiable=cfg.data.unverifiable)
    log(f"{what}: {len(loaded.prompts):,} prompts ({loaded.examples_seen:,} read; skipped: "
        f"{dict(loaded.skipped) or 'none'})")
    if loaded.warning():
        log(loaded.warning())
    prompts, ids = loaded.prompts, encode_prompts(loaded.prompts, tokenizer)
    limit = cfg.rlvr.max_prompt_tokens
    if limit is not None:
        kept = [i for i, x in enumerate(ids) if len(x) <= limit]
        log(f"{what}: {len(ids) - len(kept):,} prompts longer than rlvr.max_prompt_tokens={limit} filtered out")
        prompts, ids = [prompts[i] for i in kept], [ids[i] for i in kept]
        if not prompts:
            raise UserError(f"every prompt is longer than rlvr.max_prompt_tokens={limit} tokens")
    return prompts, ids


def check_fit(cfg: RunConfig, ids: list[np.ndarray], new_tokens: int, key: str) -> None:
    longest = max(len(x) for x in ids)
    if longest + new_tokens > cfg.train.seq_length:
        raise UserError(f"a prompt of {longest} tokens + {key}={new_tokens} does not fit "
                        f"train.seq_length={cfg.train.seq_length}: raise train.seq_length")


def load_eval_prompts(cfg: RunConfig, tokenizer, log, dp_size: int) -> tuple[list[Prompt], list[np.ndarray]] | None:
    """eval.data's prompts and their ids (None without it), filtered and checked as the training prompts."""
    if cfg.eval.data is None:
        return None
    prompts, ids = read_prompts(cfg, source_specs(cfg.eval.data), tokenizer, log, "eval data")
    if len(prompts) < dp_size:
        raise UserError(f"eval.data holds {len(prompts)} usable prompts, fewer than the {dp_size} data-parallel "
                        "ranks that share them")
    key = "eval.max_new_tokens" if cfg.eval.max_new_tokens else "rlvr.max_new_tokens"
    check_fit(cfg, ids, cfg.eval.max_new_tokens or cfg.rlvr.max_new_tokens, key)
    return prompts, ids
