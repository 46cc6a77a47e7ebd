"""Worker: a rollout engine (rlvr.engine=megatron | vllm) against the trainer at one layout. For a few
demo prompts: greedy tokens vs the trainer's own greedy decoding (full forwards, no KV cache), and the
engine's log-probs of sampled responses vs the trainer's teacher-forced log-probs of the same tokens;
then the same after each of two optimizer steps and weight pushes (the engine must see the new
weights). vllm: TRANSPORTS names the transport of the start-up push and of the two after it (e.g.
collective,memory,disk); then the weight-sync checks: a push with a tensor damaged in transit, one with
wrong values written into the engine after the load (test hooks, TULU_WEIGHT_SYNC_FAULT), each must fail
on every rank with its error, and a clean push after them restores agreement. Rank 0 writes the results.

    torchrun --nproc-per-node N tests/workers/rollout_agreement.py INIT OUT.json [TRANSPORTS] [hydra overrides...]
"""

import json
import sys

import numpy as np
import torch


def main(init: str, out: str, overrides: list[str]) -> None:
    import torch.distributed as dist

    from tulu_mcore import runtime
    from tulu_mcore.config.compose import compose
    from tulu_mcore.data.packing import pack
    from tulu_mcore.data.rlvr import encode_prompts, load_prompts
    from tulu_mcore.data.sources import source_specs
    from tulu_mcore.data.tokenizer import load_tokenizer
    from tulu_mcore.models.factory import build_model
    from tulu_mcore.models.logits import full_logits
    from tulu_mcore.rollout.megatron_engine import MegatronEngine
    from tulu_mcore.training.init import load_init_weights, resolve_init, tokenizer_path
    from tulu_mcore.training.setup import build_optimizer, wrap_for_training
    from tulu_mcore.training.step import packed_forward_step, train_step

    cfg = compose(["runtime.device=cpu", "model.attention=sdpa", f"model.init={init}", "optim.lr=1e-2",
                   *[o for o in overrides if "=" in o]])
    src = resolve_init(cfg.model)
    cfg.model.arch = src.arch
    rt = runtime.setup(cfg)
    tok = load_tokenizer(tokenizer_path(cfg.model, src))
    chunks = build_model(cfg.model.arch, rt.layout, cfg.precision, device="cpu", attention="sdpa", init=False,
                         config_overrides={"calculate_per_token_loss": True})
    load_init_weights(chunks, src)
    model = wrap_for_training(chunks, cfg.precision, cfg.optim)
    optimizer = build_optimizer(model, cfg.precision, cfg.optim)
    transports = ["collective"] * 3
    if cfg.rlvr.engine == "vllm":
        from pathlib import Path

        from tulu_mcore.rollout.vllm_engine import VllmEngine

        if overrides and "=" not in overrides[0]:
            transports = overrides[0].split(",")
        cfg.rlvr.vllm.transport = transports[0]
        cfg.train.seq_length = 256
        engine = VllmEngine.start(cfg, model, arch=cfg.model.arch, eos_id=tok.eos_token_id,
                                  run_dir=Path(out).parent / "engine_run")
    else:
        engine = MegatronEngine(model, eos_id=tok.eos_token_id, max_sequence_length=256)
    prompts = encode_prompts(load_prompts(source_specs("builtin:rlvr-demo"), on_error="strict", seed=0).prompts[:4], tok)

    def is_trainer_greedy(prompt, response, steps):
        """Whether `response` is the trainer's own greedy decoding of `prompt` (up to `steps` tokens or
        EOS): the trainer's argmax after every prefix of it is its next token (one teacher-forced forward
        instead of one per token: the same test)."""
        ids = torch.as_tensor(np.concatenate([prompt, response]), dtype=torch.long)
        with torch.no_grad():
            logits = full_logits(model, ids[None])
        for c in model:
            c.train()
        ok = torch.tensor(0)
        if logits is not None:
            picks = logits[0, len(prompt) - 1:-1].argmax(-1)
            ends = len(response) == steps or (len(response) > 0 and int(response[-1]) == tok.eos_token_id)
            ok = torch.tensor(int(ends and torch.equal(picks, ids[len(prompt):])))
        dist.broadcast(ok, 0)
        return bool(ok)

    def trainer_logps(r):
        """The trainer's teacher-forced log-probs of r's response (on rank 0; zeros elsewhere)."""
        ids = torch.as_tensor(np.concatenate([r.prompt, r.response]), dtype=torch.long)
        with torch.no_grad():
            logits = full_logits(model, ids[None])
        for c in model:
            c.train()
        if logits is None:
            return np.zeros(len(r.response))
        logps = torch.log_softmax(logits[0, len(r.prompt) - 1:-1].float(), dim=-1)
        return logps.gather(-1, ids[len(r.prompt):, None]).squeeze(-1).double().numpy()

    def gen(p, **sampling):
        """The engine's rollouts for one prompt on every rank (an engine outside the trainer answers rank 0)."""
        if engine.in_process:
            return engine.generate([p], **sampling)[0]
        box = [engine.generate([p], **sampling)[0] if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def agreement(phase, pushed):
        greedy_equal, deltas = [], []
        for i, p in enumerate(prompts):
            g = gen(p, n=1, max_new_tokens=24, temperature=0.0)[0]
            greedy_equal.append(is_trainer_greedy(p, g.response, 24))
            for r in gen(p, n=4, max_new_tokens=24, temperature=1.0, seed=i):
                deltas.append(np.abs(r.logprobs - trainer_logps(r)))
        d = np.concatenate(deltas)
        return {"phase": phase, "greedy_equal": greedy_equal, "mean_abs": float(d.mean()),
                "max_abs": float(d.max()), "tokens": int(d.size), "version": engine.weight_version,
                "pushed_bytes": pushed, "push_stats": dict(getattr(engine, "push_stats", {}))}

    result, pushed = [], 0
    for k, phase in enumerate(("initial", "after a step", "after two steps")):
        result.append(agreement(phase, pushed))
        if phase == "after two steps":
            break
        # one SFT step on arbitrary rows moves the weights; the engine must generate from the new ones
        ids = np.concatenate([prompts[0], prompts[1]])
        [row] = pack([(ids, np.ones(len(ids), np.uint8))], len(ids))
        train_step(model, optimizer, [row.as_batch()], seq_length=len(ids), micro_batch_size=1,
                   forward_step=packed_forward_step, reduction="sum")
        cfg.rlvr.vllm.transport = transports[k + 1]
        pushed = engine.push_weights(model, cfg.model.arch)
    if cfg.rlvr.engine == "vllm":
        result.append(sync_faults(engine, model, cfg, agreement))
    engine.close()
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    runtime.teardown()


def sync_faults(engine, model, cfg, agreement) -> dict:
    """Pushes over the collective transport with a test hook each: the error every rank raised (None: the
    push went through), then a clean push and its agreement."""
    import os

    import torch.distributed as dist

    from tulu_mcore.errors import EngineError

    cfg.rlvr.vllm.transport = "collective"
    faults = {"corrupt": "corrupt:model.layers.1.mlp.down_proj.weight", "overwrite": "overwrite:model.embed_tokens.weight"}
    errors = {}
    for kind, spec in faults.items():
        os.environ["TULU_WEIGHT_SYNC_FAULT"] = spec
        try:
            engine.push_weights(model, cfg.model.arch)
            mine = None
        except EngineError as e:
            mine = str(e)
        finally:
            os.environ.pop("TULU_WEIGHT_SYNC_FAULT")
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, mine)
        errors[kind] = every
    pushed = engine.push_weights(model, cfg.model.arch)
    return {**agreement("after the faults", pushed), "errors": errors}


if __name__ == "__main__":
    from tulu_mcore.runtime.logs import quiet_known_warnings

    quiet_known_warnings()
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
