"""PPO's value model: the policy's architecture with a scalar head (one value per position), its own
optimizer and LR schedule, checkpointed beside the policy under ``run.dir/value``.

It starts from ``rlvr.value_init`` (Tülu 3: the 8B reward model, for every policy size), else from the
policy's initial weights with a fresh head. A value checkpoint is written before the policy's at the
same step, so the policy's ``latest`` always has its value model on disk.
"""

from __future__ import annotations

import copy
from pathlib import Path

from tulu_mcore.checkpoint.dist import load_checkpoint
from tulu_mcore.checkpoint.run import RunCheckpointer
from tulu_mcore.config.schema import ModelConfig
from tulu_mcore.dtypes import TORCH_DTYPES
from tulu_mcore.errors import CheckpointError, UserError
from tulu_mcore.models.factory import build_model
from tulu_mcore.training.init import load_init_weights, resolve_init
from tulu_mcore.training.setup import build_optimizer, build_scheduler, wrap_for_training

VALUE_DIR = "value"


class ValueModel:
    def __init__(self, tr, total_optimizer_steps: int, init: str | None, lr: float | None):
        cfg = tr.cfg
        self.tr = tr
        self.ckpts = RunCheckpointer(tr.run_dir / VALUE_DIR, cfg.train.keep_last)
        source = resolve_init(ModelConfig(init=init)) if init else tr.init
        if init and source.arch is not None and source.arch.vocab_size != tr.arch.vocab_size:
            raise UserError(f"rlvr.value_init={init}: its vocabulary ({source.arch.vocab_size}) is not the policy's "
                            f"({tr.arch.vocab_size}); the value model must share the policy's tokenizer")
        self.arch = source.arch if init and source.arch is not None else tr.arch
        self.init, self.hf_config = source, source.hf_config
        chunks = build_model(self.arch, tr.layout, cfg.precision, device=tr.rt.device, attention=cfg.model.attention,
                             kernels=cfg.model.kernels, init=source.kind == "none", head="score",
                             config_overrides=tr.config_overrides)
        if tr.latest is None:
            load_init_weights(chunks, source, head="score")
            what = f"rlvr.value_init={init}" if init else "the policy's initial weights (a fresh value head)"
            tr.log(f"value model from {what}")
        optim = copy.deepcopy(cfg.optim)
        if lr is not None:
            optim.lr = lr
        self.model = wrap_for_training(chunks, cfg.precision, optim)
        self.optimizer = build_optimizer(self.model, cfg.precision, optim)
        self.scheduler = build_scheduler(self.optimizer, optim, total_optimizer_steps)

    def resume(self, policy_checkpoint: Path | None) -> None:
        """Load the value checkpoint of the policy checkpoint's step."""
        if policy_checkpoint is None:
            return
        path = self.ckpts.root / policy_checkpoint.name
        if not path.is_dir():
            raise CheckpointError(f"{policy_checkpoint} has no value model beside it ({path} is missing): "
                                  "the run's value checkpoints were removed; start a new run.dir")
        state = load_checkpoint(self.model, path, optimizer=self.optimizer)
        self.scheduler.load_state_dict(state["common"]["scheduler"])

    def save(self, step: int) -> Path:
        tr = self.tr
        return self.ckpts.save(step, self.model, optimizer=self.optimizer, arch=self.arch,
                               dtype=TORCH_DTYPES[tr.cfg.precision.params_dtype], hf_config=self.hf_config,
                               extra={"head": "score"},
                               common={"step": step, "scheduler": self.scheduler.state_dict()})
