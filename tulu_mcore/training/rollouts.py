"""What both RLVR recipes (GRPO, PPO) do with rollouts around their losses: the prompts (loaded,
tokenized, checked against the row length), which of them a step takes, the verifier scores, prompt +
response sequences packed into rows with per-token tensors, and the verifier metrics of a step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from tulu_mcore.config.schema import RlvrConfig, RunConfig
from tulu_mcore.data.cache import fingerprint
from tulu_mcore.data.packing import pack
from tulu_mcore.data.rlvr import Prompt, encode_prompts, load_prompts
from tulu_mcore.data.sources import source_fingerprint, source_specs
from tulu_mcore.data.tokenizer import tokenizer_fingerprint
from tulu_mcore.errors import UserError
from tulu_mcore.rewards import DATASETS, check, reward
from tulu_mcore.rollout import Rollout

COUNTS = 5  # per dataset: responses, verified, without EOS, response tokens, score sum


@dataclass
class RlvrData:
    prompts: list[Prompt]
    ids: list[np.ndarray]  # the prompts' token ids (chat template + generation prompt)
    key: str  # identifies data + tokenizer (a resumed run must see the same)
    steps_per_epoch: int


def load_rlvr_data(cfg: RunConfig, tokenizer, log, dp_size: int) -> RlvrData:
    per_step = cfg.train.global_batch_size
    if per_step % dp_size:
        raise UserError(f"train.global_batch_size={per_step} prompts must divide over {dp_size} data-parallel ranks")
    specs = source_specs(cfg.data.train)
    loaded = load_prompts(specs, on_error=cfg.data.on_error, seed=cfg.data.seed)
    log(f"data: {len(loaded.prompts):,} prompts ({loaded.examples_seen:,} read; skipped: "
        f"{dict(loaded.skipped) or 'none'})")
    ids = encode_prompts(loaded.prompts, tokenizer)
    steps_per_epoch = len(loaded.prompts) // per_step
    if steps_per_epoch == 0:
        raise UserError(f"{len(loaded.prompts)} prompts: fewer than one step's train.global_batch_size={per_step}")
    longest = max(len(x) for x in ids)
    if longest + cfg.rlvr.max_new_tokens > cfg.train.seq_length:
        raise UserError(f"a prompt of {longest} tokens + rlvr.max_new_tokens={cfg.rlvr.max_new_tokens} does not fit "
                        f"train.seq_length={cfg.train.seq_length}: raise train.seq_length")
    key = fingerprint({"kind": "rlvr", "sources": [source_fingerprint(s) for s in specs],
                       "tokenizer": tokenizer_fingerprint(tokenizer)})
    return RlvrData(loaded.prompts, ids, key, steps_per_epoch)


def step_prompts(data: RlvrData, step: int, per_step: int, seed: int) -> tuple[int, list[int]]:
    """(epoch, the indices of the prompts of `step`): a seeded permutation per epoch, in slices."""
    epoch, k = divmod(step, data.steps_per_epoch)
    order = np.random.default_rng(seed + epoch).permutation(len(data.prompts))
    return epoch, [int(i) for i in order[k * per_step:(k + 1) * per_step]]


def score(prompts: list[Prompt], groups: list[list[Rollout]], tokenizer, opts: RlvrConfig):
    """Verifier scores of every response: (docs, scores [prompts, samples], counts [datasets, COUNTS]).
    A doc is one prompt + response sequence with what the losses need per token."""
    docs, scores = [], []
    counts = torch.zeros(len(DATASETS), COUNTS, dtype=torch.float64)
    for p, group in zip(prompts, groups):
        row = []
        for r in group:
            verdict = check(p.dataset, tokenizer.decode(r.response.tolist(), skip_special_tokens=True),
                            p.ground_truth, tulu3_compat=opts.tulu3_compat)
            row.append(reward(verdict, r.finished, verified_reward=opts.verified_reward,
                              no_eos_penalty=opts.no_eos_penalty))
            counts[DATASETS.index(p.dataset)] += torch.tensor(
                [1, verdict.verified, not r.finished, len(r.response), row[-1]], dtype=torch.float64)
            docs.append({"ids": np.concatenate([r.prompt, r.response]), "prompt_len": len(r.prompt),
                         "engine_logps": r.logprobs, "version": r.weight_version})
        scores.append(row)
    return docs, np.asarray(scores, dtype=np.float64), counts


def pack_docs(docs: list[dict], tr) -> list:
    """Rows of prompt + response sequences; the response tokens are the trained ones."""
    examples = []
    for d in docs:
        trained = np.zeros(len(d["ids"]), np.uint8)
        trained[d["prompt_len"]:] = 1
        examples.append((d["ids"], trained))
    return pack(examples, tr.cfg.train.seq_length, multiple=tr.multiple, pad_id=tr.pad_id, trim=tr.trim_rows)


def per_token(row, docs: list[dict], key: str) -> torch.Tensor:
    """[1, T]: each document's per-response-token values (`docs[i][key]`) at the positions that predict
    those tokens (the loss mask's positions), zeros elsewhere."""
    arr = torch.zeros_like(row.loss_mask, dtype=torch.float32)
    for d, unit in enumerate(row.units):
        start = int(row.cu_seqlens_padded[d]) + docs[unit]["prompt_len"] - 1
        vals = torch.as_tensor(docs[unit][key], dtype=torch.float32)
        arr[0, start:start + len(vals)] = vals
    return arr


def from_token(row, values: torch.Tensor, docs: list[dict], key: str) -> None:
    """The inverse of per_token: `docs[unit][key]` = the row's values ([1, T]) at that document's
    response positions."""
    values = values.reshape(-1)
    for d, unit in enumerate(row.units):
        start = int(row.cu_seqlens_padded[d]) + docs[unit]["prompt_len"] - 1
        n = len(docs[unit]["ids"]) - docs[unit]["prompt_len"]
        docs[unit][key] = values[start:start + n].double().cpu().numpy()


def is_replica_reporter() -> bool:
    """One rank per data-parallel replica (TP rank 0 of the last pipeline stage, which also holds the
    per-token results of forward passes)."""
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_rank() == 0 and ps.is_pipeline_last_stage(ignore_virtual=True)


def verifier_record(counts: torch.Tensor) -> dict:
    """The step's verifier metrics over all data-parallel ranks (`counts` from score(); every TP rank
    and pipeline stage of a replica scored the same rollouts, so one rank per replica contributes)."""
    counts = counts.clone()
    if not is_replica_reporter():
        counts.zero_()
    dist.all_reduce(counts)
    n, verified, no_eos, length, total = counts.sum(0).tolist()
    return {
        "reward_mean": total / n,
        "verified_rate": verified / n,
        **{f"verified_rate_{name}": counts[j, 1].item() / counts[j, 0].item()
           for j, name in enumerate(DATASETS) if counts[j, 0] > 0},
        "response_length": length / n,
        "no_eos_rate": no_eos / n,
        "responses": int(n),
    }
