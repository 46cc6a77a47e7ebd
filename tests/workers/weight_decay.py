"""Worker: one optimizer step on zero gradients of the tiny model, with and without
optim.decay_norms_and_biases; rank 0 writes, per parameter name, its value before and after as JSON.
Adam's update is 0 on zero gradients, so each parameter moves only by decoupled weight decay.

    python tests/workers/weight_decay.py OUT.json
"""

import json
import sys


def main(out: str) -> None:
    import torch.distributed as dist

    from tulu_mcore import runtime
    from tulu_mcore.config.compose import compose
    from tulu_mcore.models.factory import build_model
    from tulu_mcore.training.setup import build_optimizer, build_scheduler, wrap_for_training

    results = {}
    for decay_all in (False, True):
        cfg = compose(["runtime.device=cpu", "model=tiny", "optim.lr=0.1", "optim.weight_decay=0.01",
                       "optim.lr_schedule=constant", "optim.warmup_ratio=0",
                       f"optim.decay_norms_and_biases={str(decay_all).lower()}"])
        rt = runtime.setup(cfg)
        chunks = build_model(cfg.model.arch, rt.layout, cfg.precision, device=rt.device,
                             attention=cfg.model.attention, init=True)
        model = wrap_for_training(chunks, cfg.precision, cfg.optim)
        opt = build_optimizer(model, cfg.precision, cfg.optim)
        build_scheduler(opt, cfg.optim, 10)  # sets each group's LR and weight decay (x its wd_mult)
        before = {n: p.detach().float().clone() for n, p in model[0].named_parameters()}
        for chunk in model:
            chunk.zero_grad_buffer()  # zero gradients, as after a backward pass on a zero loss
        opt.zero_grad()
        opt.step()
        results[str(decay_all)] = {
            n: {"before": before[n].flatten()[:4].tolist(), "after": p.detach().float().flatten()[:4].tolist(),
                "dim": p.dim()}
            for n, p in model[0].named_parameters()}
        runtime.teardown()
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1])
