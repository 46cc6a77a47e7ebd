"""Tülu 3 supervised finetuning on megatron-core: ``tulu-train recipe=sft``.

Conversations rendered with the Tülu template (assistant turns trained), tokenized once into a cache,
shuffled per epoch, split over data-parallel ranks and packed into rows; one optimizer step per global
batch through megatron's pipeline schedule with Tülu's sum loss (or a token mean). Checkpoints, resume,
stop requests, metrics and the final HF export are the shared machinery of
:class:`tulu_mcore.training.run.TrainingRun`.
"""

from __future__ import annotations

import time
from functools import partial

from tulu_mcore.config.schema import RunConfig
from tulu_mcore.training.run import TrainingRun
from tulu_mcore.training.setup import current_lr
from tulu_mcore.training.step import forward_reports, packed_forward_step, train_step


def sft_step(tr: TrainingRun, batches, step: int) -> dict:
    """One optimizer step on `step`'s conversations; its metrics record."""
    t0 = time.time()
    rows = batches.rows(step, **tr.pack_options())
    lr = current_lr(tr.optimizer)
    result = train_step(tr.model, tr.optimizer, [r.as_batch() for r in rows], seq_length=tr.cfg.train.seq_length,
                        micro_batch_size=1, forward_step=packed_forward_step, reduction=tr.cfg.loss.reduction)
    tr.scheduler.step(1)
    return {
        "loss": result.loss,  # per sequence (sum) or per trained token (token_mean)
        "token_mean_loss": result.token_mean_loss,
        "grad_norm": result.grad_norm,
        "lr": lr,
        "trained_tokens": result.num_tokens,
        "sequences": result.num_seqs,
        "epoch": batches.cursor(step).epoch,
        "skipped": result.skipped,
        **tr.throughput(rows, time.time() - t0),
    }


def heldout_loss(tr: TrainingRun, data) -> dict:
    """The model's loss on the held-out conversations (eval.data): per trained token and per sequence."""
    total, tokens, seqs = forward_reports(tr.model, [r.as_batch() for r in tr.eval_rows(data)],
                                          seq_length=tr.cfg.train.seq_length,
                                          forward_step=partial(packed_forward_step, reduction="sum")).tolist()
    return {"loss": total / tokens, "loss_per_sequence": total / seqs, "sequences": int(seqs)}


def run(cfg: RunConfig) -> dict:
    tr = TrainingRun(cfg, "sft")
    data, held_out = tr.prepare_data("sft"), tr.prepare_eval("sft")
    batches = tr.step_batches(data)
    tr.build(tr.planned_steps(batches.steps_per_epoch))
    tr.resume(data.key)
    return tr.loop(partial(sft_step, tr, batches), cursor=lambda step: vars(batches.cursor(step)),
                   evaluate=partial(heldout_loss, tr, held_out) if held_out else None)
