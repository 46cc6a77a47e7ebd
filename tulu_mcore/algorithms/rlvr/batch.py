"""A step's rollouts on one data-parallel rank, typed (in the spirit of torchtune's ``Trajectory``).

A :class:`Trajectory` is one prompt + sampled response; its fields are grouped by the stage of the RL
step that fills them: the engine, the verifier, the trainer's forward passes, the algorithm. Per-token
fields hold one value per *response* token. A :class:`RolloutBatch` holds the step's trajectories in
group order (the samples of prompt j are trajectories ``j*n .. j*n + n-1``), packs them into rows (the
response tokens are the trained ones) and moves per-token fields between trajectories and rows: a
response token's value sits at the row position that *predicts* it (the loss mask's position).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist

from tulu_mcore.config.schema import RlvrConfig
from tulu_mcore.data.packing import PackedRow, pack
from tulu_mcore.data.rlvr import Prompt
from tulu_mcore.rewards import DATASETS, check, reward
from tulu_mcore.rollout import Rollout

PerToken = Literal["engine_logps", "old_logps", "ref_logps", "old_values", "advantages", "returns", "loss_weights",
                   "value_weights"]


@dataclass
class Trajectory:
    # the engine
    ids: np.ndarray  # prompt + response token ids (EOS included when it was generated)
    prompt_len: int
    engine_logps: np.ndarray  # per response token: the engine's sampling log-prob
    finished: bool  # EOS before rlvr.max_new_tokens
    weight_version: int  # of the weights that generated it
    # the verifier
    dataset: str
    verified: bool
    score: float  # the reward the algorithm starts from (rlvr.verified_reward, no-EOS penalty)
    check_status: str = "ok"  # the verifier's: ok | timeout | error (scored 0, counted in the metrics)
    # the trainer's forward passes, per response token (PPO; GRPO reads the reference in its loss)
    old_logps: np.ndarray | None = None  # π_old: the policy before this step's updates
    ref_logps: np.ndarray | None = None  # π_ref: the frozen reference
    old_values: np.ndarray | None = None  # V_old: the value model before this step's updates
    # the algorithm, per response token
    advantages: np.ndarray | None = None
    loss_weights: np.ndarray | None = None  # each token's weight in the step's loss (rlvr.loss_aggregation)
    # PPO's value model, per value position (the response tokens, and with rlvr.score_position=after_eos
    # the position after EOS where the score sits)
    returns: np.ndarray | None = None  # the value model's targets
    value_weights: np.ndarray | None = None

    @property
    def response_len(self) -> int:
        return len(self.ids) - self.prompt_len


@dataclass
class RolloutBatch:
    trajectories: list[Trajectory]
    samples_per_prompt: int

    @classmethod
    def score(cls, prompts: list[Prompt], groups: list[list[Rollout]], tokenizer, opts: RlvrConfig,
              checker=None) -> "RolloutBatch":
        """The engine's rollouts of `prompts` (one group of samples per prompt), verified and scored by
        `checker` (an :class:`~tulu_mcore.rewards.isolated.IsolatedChecker`; default: in this process)."""
        out = []
        for p, group in zip(prompts, groups):
            for r in group:
                text = tokenizer.decode(r.response.tolist(), skip_special_tokens=True)
                if checker is None:
                    verdict = check(p.dataset, text, p.ground_truth, tulu3_compat=opts.tulu3_compat,
                                    timeout_s=opts.verifier_timeout_s)
                else:
                    verdict = checker.check(p.dataset, text, p.ground_truth, tulu3_compat=opts.tulu3_compat)
                out.append(Trajectory(
                    ids=np.concatenate([r.prompt, r.response]), prompt_len=len(r.prompt),
                    engine_logps=np.asarray(r.logprobs, dtype=np.float64), finished=r.finished,
                    weight_version=r.weight_version, dataset=p.dataset, verified=verdict.verified,
                    check_status=verdict.status,
                    score=reward(verdict, r.finished, verified_reward=opts.verified_reward,
                                 non_stop_penalty=opts.non_stop_penalty,
                                 penalty_reward_value=opts.penalty_reward_value)))
        return cls(out, len(groups[0]) if groups else opts.samples_per_prompt)

    # ------------------------------------------------------------------------------ shape
    @property
    def scores(self) -> np.ndarray:
        """[prompts, samples]"""
        return np.array([t.score for t in self.trajectories], dtype=np.float64).reshape(-1, self.samples_per_prompt)

    @property
    def weight_version(self) -> int:
        """The oldest weights among the rollouts."""
        return min(t.weight_version for t in self.trajectories)

    def split(self, parts: int) -> list["RolloutBatch"]:
        """`parts` batches of whole prompt groups, in order (GRPO's mini-batches)."""
        n = self.samples_per_prompt
        prompts = np.array_split(np.arange(len(self.trajectories) // n), parts)
        return [RolloutBatch([self.trajectories[j * n + k] for j in part for k in range(n)], n) for part in prompts]

    def set_advantages(self, per_sequence: np.ndarray) -> None:
        """One advantage per trajectory, on each of its response tokens (GRPO)."""
        for t, a in zip(self.trajectories, per_sequence.reshape(-1)):
            t.advantages = np.full(t.response_len, float(a))

    # ------------------------------------------------------------------------------ rows
    def pack(self, tr) -> list[PackedRow]:
        """Rows of prompt + response sequences for the run `tr` (a TrainingRun); the response tokens are
        the trained ones."""
        examples = []
        for t in self.trajectories:
            trained = np.zeros(len(t.ids), np.uint8)
            trained[t.prompt_len:] = 1
            examples.append((t.ids, trained))
        return pack(examples, tr.cfg.train.seq_length, multiple=tr.multiple, pad_id=tr.pad_id, trim=tr.trim_rows)

    def per_token(self, row: PackedRow, field: PerToken, *, ones: bool = False) -> torch.Tensor:
        """[1, T]: each trajectory's `field` at the positions that predict its response tokens (a field
        longer than the response runs on: one more value sits at the response's last token), zeros
        elsewhere; with `ones`, 1 where the field has a value (its mask)."""
        arr = torch.zeros_like(row.loss_mask, dtype=torch.float32)
        for d, unit in enumerate(row.units):
            t = self.trajectories[unit]
            start = int(row.cu_seqlens_padded[d]) + t.prompt_len - 1
            vals = torch.as_tensor(getattr(t, field), dtype=torch.float32)
            arr[0, start:start + len(vals)] = 1.0 if ones else vals
        return arr

    def from_token(self, row: PackedRow, values: torch.Tensor, field: PerToken, extra=lambda t: 0) -> None:
        """The inverse of per_token: each trajectory's `field` from the row's values ([1, T]), its
        response length + `extra(trajectory)` of them."""
        values = values.reshape(-1)
        for d, unit in enumerate(row.units):
            t = self.trajectories[unit]
            start = int(row.cu_seqlens_padded[d]) + t.prompt_len - 1
            setattr(t, field, values[start:start + t.response_len + extra(t)].double().cpu().numpy())

    def set_loss_weights(self, rule: str, group_size: int, field: PerToken = "loss_weights",
                         lengths: list[int] | None = None) -> None:
        """Each trajectory's per-token weights in one optimizer step's loss (see loss_weights), the
        step's totals from every data-parallel rank. `lengths`: each trajectory's tokens in that loss
        (default its response's)."""
        from megatron.core import parallel_state as ps

        lengths = lengths or [t.response_len for t in self.trajectories]
        k = group_len(rule, group_size)
        totals = torch.tensor([sum(lengths), -(-len(lengths) // k) if k else 0], dtype=torch.float64)
        if k:
            dist.all_reduce(totals, group=ps.get_data_parallel_group())
        for t, w in zip(self.trajectories, loss_weights(lengths, rule, group_size, *totals.tolist())):
            setattr(t, field, w)

    # ------------------------------------------------------------------------------ metrics
    def verifier_record(self) -> dict:
        """The step's verifier metrics over all data-parallel ranks (collective; every TP rank and
        pipeline stage of a replica scored the same rollouts, so one rank per replica contributes)."""
        # responses, verified, no EOS, tokens, score, verifier timeouts, verifier errors
        counts = torch.zeros(len(DATASETS), 7, dtype=torch.float64)
        if is_replica_reporter():
            for t in self.trajectories:
                counts[DATASETS.index(t.dataset)] += torch.tensor(
                    [1, t.verified, not t.finished, t.response_len, t.score, t.check_status == "timeout",
                     t.check_status not in ("ok", "timeout")], dtype=torch.float64)
        dist.all_reduce(counts)
        n, verified, no_eos, length, total, timeouts, errors = counts.sum(0).tolist()
        return {
            "reward_mean": total / n,
            "verified_rate": verified / n,
            **{f"verified_rate_{name}": counts[j, 1].item() / counts[j, 0].item()
               for j, name in enumerate(DATASETS) if counts[j, 0] > 0},
            "response_length": length / n,
            "no_eos_rate": no_eos / n,
            "verifier_timeouts": int(timeouts),  # responses whose check ran out of time (scored 0)
            "verifier_errors": int(errors),  # responses whose check failed (a malformed ground truth: scored 0)
            "responses": int(n),
        }


def group_len(rule: str, group_size: int) -> int | None:
    """Sequences per group of rlvr.loss_aggregation `rule` (None: one mean over all tokens)."""
    return {"token_mean": None, "group_token_mean": group_size, "sequence_mean": 1}[rule]


def loss_weights(lengths: list[int], rule: str, group_size: int, n_all: float, g_all: float) -> list[np.ndarray]:
    """Per-token loss weights of sequences of `lengths` tokens (in order), for an optimizer step of
    `n_all` tokens and `g_all` groups over every data-parallel rank. Megatron divides sum(w * loss) over
    the step's tokens by n_all, so w = 1 is one token mean (token_mean) and w = n_all / (g_all n_g) the
    mean over the step's groups of each group's token mean, n_g tokens in group g (group_token_mean:
    `group_size` consecutive sequences, Tülu's per-micro-batch mean; sequence_mean: one)."""
    k = group_len(rule, group_size)
    if k is None:
        return [np.ones(n) for n in lengths]
    out = []
    for i in range(0, len(lengths), k):
        group = lengths[i:i + k]
        out += [np.full(n, n_all / (g_all * max(sum(group), 1))) for n in group]
    return out


def is_replica_reporter() -> bool:
    """One rank per data-parallel replica (TP rank 0 of the last pipeline stage, which also holds the
    per-token results of forward passes)."""
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_rank() == 0 and ps.is_pipeline_last_stage(ignore_virtual=True)
