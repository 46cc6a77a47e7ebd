"""Reward-model training on megatron-core: ``tulu-train recipe=rm``.

The policy's body with a scalar head (:mod:`tulu_mcore.models.heads`) scores each sequence at its last
trained token (the EOS closing the final assistant turn); the loss is Bradley-Terry,
-log σ(r_chosen - r_rejected), averaged over the global batch's pairs. Pairs are packed like DPO's
(chosen and rejected in one row). The final model exports as a Hugging Face
``LlamaForSequenceClassification`` (``num_labels=1``): PPO's value-model initialisation.
"""

from __future__ import annotations

import time
from functools import partial

import torch
import torch.nn.functional as F

from tulu_mcore.config.schema import RunConfig
from tulu_mcore.training.run import TrainingRun
from tulu_mcore.training.sequences import is_cp_rank0, sequence_scores
from tulu_mcore.training.setup import current_lr
from tulu_mcore.training.step import forward_reports, optimizer_step, packed_forward, reduce_report

REPORT = 5  # loss sum, pairs, correct, chosen score sum, rejected score sum


def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Per-pair -log σ(r_c - r_r)."""
    return -F.logsigmoid(chosen_scores - rejected_scores)


def rm_loss(local: dict, batch: dict, output: torch.Tensor):
    n = batch["num_seqs"]
    scores = sequence_scores(output, local, n)
    sc, sr = scores[0::2], scores[1::2]
    total = bradley_terry_loss(sc, sr).sum()
    own = float(is_cp_rank0())  # every CP rank holds the same pairs: count them once
    with torch.no_grad():
        report = torch.stack([total.detach(), torch.tensor(n // 2, dtype=total.dtype, device=total.device),
                              (sc > sr).sum().to(total), sc.sum(), sr.sum()]) * own
    return total, torch.tensor(int(n // 2 * own), device=total.device), {"rm": report}


def rm_forward_step(data_iterator, model):
    batch = next(data_iterator)
    output, local = packed_forward(batch, model, labels=False)
    return output, partial(rm_loss, local, batch)


def rm_step(tr: TrainingRun, batches, step: int) -> dict:
    """One optimizer step on `step`'s preference pairs; its metrics record."""
    t0 = time.time()
    rows = batches.rows(step, **tr.pack_options())
    lr = current_lr(tr.optimizer)
    losses, ok, grad_norm = optimizer_step(tr.model, tr.optimizer, [r.as_batch() for r in rows],
                                           seq_length=tr.cfg.train.seq_length, forward_step=rm_forward_step)
    tr.scheduler.step(1)
    loss, pairs, correct, sc, sr = reduce_report(losses, "rm", REPORT).tolist()
    return {
        "loss": loss / pairs,
        "accuracy": correct / pairs,  # share of pairs scored chosen > rejected
        "margin": (sc - sr) / pairs,
        "score_chosen": sc / pairs,
        "score_rejected": sr / pairs,
        "grad_norm": grad_norm,
        "lr": lr,
        "pairs": int(pairs),
        "epoch": batches.cursor(step).epoch,
        "skipped": not ok,
        **tr.throughput(rows, time.time() - t0),
    }


def heldout_preferences(tr: TrainingRun, data) -> dict:
    """Accuracy, margin and loss of the reward model on the held-out pairs (eval.data)."""
    loss, pairs, correct, sc, sr = forward_reports(tr.model, [r.as_batch() for r in tr.eval_rows(data)],
                                                   seq_length=tr.cfg.train.seq_length, forward_step=rm_forward_step,
                                                   key="rm", size=REPORT).tolist()
    return {"loss": loss / pairs, "accuracy": correct / pairs, "margin": (sc - sr) / pairs, "pairs": int(pairs)}


def run(cfg: RunConfig) -> dict:
    tr = TrainingRun(cfg, "rm")
    data, held_out = tr.prepare_data("pairs"), tr.prepare_eval("pairs")
    batches = tr.step_batches(data)
    tr.build(tr.planned_steps(batches.steps_per_epoch), head="score")
    tr.resume(data.key)
    return tr.loop(partial(rm_step, tr, batches), cursor=lambda step: vars(batches.cursor(step)),
                   evaluate=partial(heldout_preferences, tr, held_out) if held_out else None)
