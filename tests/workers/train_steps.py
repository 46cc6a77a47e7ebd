"""Worker: a few optimizer steps from a checkpoint at one parallel layout; rank 0 writes the losses and
gradient norms as JSON. The test compares layouts against the single-rank run.

    torchrun --nproc-per-node N tests/workers/train_steps.py CKPT OUT.json [hydra overrides...]
"""

import json
import sys

import torch


def global_batch(vocab: int, n: int, seq: int, seed: int = 1234) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (n, seq + 1), generator=g)
    # an uneven mask: CP ranks and micro-batches hold different numbers of trained tokens
    mask = (torch.rand(n, seq, generator=g) > 0.3).float()
    return [
        {"tokens": tokens[i : i + 1, :-1], "labels": tokens[i : i + 1, 1:], "loss_mask": mask[i : i + 1]}
        for i in range(n)
    ]


def main(ckpt: str, out: str, overrides: list[str]) -> None:
    import torch.distributed as dist

    from tulu_mcore import runtime
    from tulu_mcore.checkpoint.dist import checkpoint_arch, load_model, read_meta
    from tulu_mcore.config.compose import compose
    from tulu_mcore.models.factory import build_model
    from tulu_mcore.training.setup import build_optimizer, wrap_for_training
    from tulu_mcore.training.step import train_step

    device = [] if any(o.startswith("runtime.device=") for o in overrides) else ["runtime.device=cpu"]
    cfg = compose([*device, *overrides])
    cfg.model.arch = checkpoint_arch(read_meta(ckpt))
    steps = 3
    rt = runtime.setup(cfg)
    lay = rt.layout
    chunks = build_model(cfg.model.arch, lay, cfg.precision, device=rt.device, attention=cfg.model.attention,
                         kernels=cfg.model.kernels, init=False, config_overrides={"calculate_per_token_loss": True})
    load_model(chunks, ckpt)
    model = wrap_for_training(chunks, cfg.precision, cfg.optim)
    opt = build_optimizer(model, cfg.precision, cfg.optim)

    from megatron.core import parallel_state as ps

    batch = global_batch(cfg.model.arch.vocab_size, cfg.train.global_batch_size, cfg.train.seq_length)
    per_rank = cfg.train.global_batch_size // lay.dp
    dp_rank = ps.get_data_parallel_rank()
    mine = batch[dp_rank * per_rank : (dp_rank + 1) * per_rank]
    mbs = cfg.train.micro_batch_size
    micro = [
        {k: torch.cat([b[k] for b in mine[i : i + mbs]]) for k in mine[0]} for i in range(0, per_rank, mbs)
    ]
    results = []
    for _ in range(steps):
        r = train_step(model, opt, micro, seq_length=cfg.train.seq_length, micro_batch_size=mbs)
        results.append({"loss": r.loss, "grad_norm": r.grad_norm, "tokens": r.num_tokens})
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump({"layout": lay.__dict__, "steps": results}, f)
    runtime.teardown()


if __name__ == "__main__":
    from tulu_mcore.runtime.logs import quiet_known_warnings

    quiet_known_warnings()
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
