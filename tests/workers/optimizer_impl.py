"""Worker: optim.impl across a resume. A checkpoint saved after one fused AdamW step is loaded into
optimizers built with each implementation; rank 0 writes, per implementation asked for, the groups'
flags after the load, where the `step` tensors sit, and the loss of one more step, as JSON.

    python tests/workers/optimizer_impl.py CKPT_DIR OUT.json
"""

import json
import sys

import torch


def main(ckpt: str, out: str) -> None:
    import torch.distributed as dist

    from tulu_mcore import runtime
    from tulu_mcore.checkpoint.dist import load_checkpoint, save_checkpoint
    from tulu_mcore.config.compose import compose
    from tulu_mcore.models.factory import build_model
    from tulu_mcore.training.setup import build_optimizer, inner_optimizers, wrap_for_training
    from tulu_mcore.training.step import train_step

    cfg = compose(["runtime.device=cpu", "model=tiny", "optim.lr=1e-3"])
    rt = runtime.setup(cfg)
    tokens = torch.randint(0, cfg.model.arch.vocab_size, (2, 33), generator=torch.Generator().manual_seed(0))
    batch = [{"tokens": t[None, :-1], "labels": t[None, 1:], "loss_mask": torch.ones(1, 32)} for t in tokens]

    def build(impl):
        cfg.optim.impl = impl
        chunks = build_model(cfg.model.arch, rt.layout, cfg.precision, device=rt.device, attention="sdpa",
                             config_overrides={"calculate_per_token_loss": True})
        model = wrap_for_training(chunks, cfg.precision, cfg.optim)
        return model, build_optimizer(model, cfg.precision, cfg.optim)

    model, opt = build("fused")
    train_step(model, opt, batch, seq_length=32, micro_batch_size=1)
    save_checkpoint(model, ckpt, arch=cfg.model.arch, dtype=torch.float32, optimizer=opt)
    results = {}
    for impl in ("for_loop", "foreach", "fused"):
        model, opt = build(impl)
        load_checkpoint(model, ckpt, optimizer=opt)
        inner = inner_optimizers(opt)
        results[impl] = {
            "flags": sorted({(g["fused"], g["foreach"]) for o in inner for g in o.param_groups}),
            "step_devices": sorted({str(st["step"].device) for o in inner for st in o.state.values()}),
            "steps": sorted({float(st["step"]) for o in inner for st in o.state.values()}),
            "next_loss": train_step(model, opt, batch, seq_length=32, micro_batch_size=1).loss,
        }
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    runtime.teardown()


if __name__ == "__main__":
    from tulu_mcore.runtime.logs import quiet_known_warnings

    quiet_known_warnings()
    main(sys.argv[1], sys.argv[2])
