"""Worker: a rollout engine (rlvr.engine=megatron | vllm) against the trainer at one layout. For a few
demo prompts: greedy tokens vs the trainer's own greedy decoding (full forwards, no KV cache), and the
engine's log-probs of sampled responses vs the trainer's teacher-forced log-probs of the same tokens;
then the same after each of two optimizer steps and weight pushes (the engine must see the new
weights; vllm: the second push goes through safetensors on disk). Rank 0 writes the results.

    torchrun --nproc-per-node N tests/workers/rollout_agreement.py INIT OUT.json [hydra overrides...]
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
    from tulu_mcore.training.step import packed_forward, packed_forward_step, train_step

    cfg = compose(["runtime.device=cpu", "model.attention=sdpa", f"model.init={init}", "optim.lr=1e-2", *overrides])
    src = resolve_init(cfg.model)
    cfg.model.arch = src.arch
    rt = runtime.setup(cfg)
    tok = load_tokenizer(tokenizer_path(cfg.model, src))
    chunks = build_model(cfg.model.arch, rt.layout, cfg.precision, device="cpu", attention="sdpa", init=False,
                         config_overrides={"calculate_per_token_loss": True})
    load_init_weights(chunks, src)
    model = wrap_for_training(chunks, cfg.precision, cfg.optim)
    optimizer = build_optimizer(model, cfg.precision, cfg.optim)
    if cfg.rlvr.engine == "vllm":
        from pathlib import Path

        from tulu_mcore.rollout.vllm_engine import VllmEngine

        cfg.train.seq_length = 256
        engine = VllmEngine.start(cfg, model, arch=cfg.model.arch, eos_id=tok.eos_token_id,
                                  run_dir=Path(out).parent / "engine_run")
    else:
        engine = MegatronEngine(model, eos_id=tok.eos_token_id, max_sequence_length=256)
    prompts = encode_prompts(load_prompts(source_specs("builtin:rlvr-demo"), on_error="strict", seed=0).prompts[:4], tok)

    def trainer_greedy(prompt, steps):
        ids = list(prompt)
        for _ in range(steps):
            logits = full_logits(model, torch.tensor([ids]))
            nxt = torch.tensor(0)
            if dist.get_rank() == 0:
                nxt = logits[0, -1].argmax()
            dist.broadcast(nxt, 0)
            ids.append(int(nxt))
            if int(nxt) == tok.eos_token_id:
                break
        return ids[len(prompt):]

    def trainer_logps(r):
        ids = np.concatenate([r.prompt, r.response])
        trained = np.zeros(len(ids), np.uint8)
        trained[len(r.prompt):] = 1
        [row] = pack([(ids, trained)], len(ids))
        with torch.no_grad():
            ce, local = packed_forward(row.as_batch(), model[0])
        return (-ce[0, len(r.prompt) - 1:len(ids) - 1]).double().numpy()

    def gen(p, **sampling):
        """The engine's rollouts for one prompt on every rank (an engine outside the trainer answers rank 0)."""
        if engine.in_process:
            return engine.generate([p], **sampling)[0]
        box = [engine.generate([p], **sampling)[0] if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    result, pushed = [], 0
    for phase in ("initial", "after a step", "after two steps"):
        greedy_equal, deltas = [], []
        for i, p in enumerate(prompts):
            g = gen(p, n=1, max_new_tokens=24, temperature=0.0)[0]
            greedy_equal.append(g.response.tolist() == trainer_greedy(p, 24))
            for r in gen(p, n=4, max_new_tokens=24, temperature=1.0, seed=i):
                deltas.append(np.abs(r.logprobs - trainer_logps(r)))
        d = np.concatenate(deltas)
        result.append({"phase": phase, "greedy_equal": greedy_equal, "mean_abs": float(d.mean()),
                       "max_abs": float(d.max()), "tokens": int(d.size), "version": engine.weight_version,
                       "pushed_bytes": pushed})
        if phase == "after two steps":
            break
        # one SFT step on arbitrary rows moves the weights; the engine must generate from the new ones
        ids = np.concatenate([prompts[0], prompts[1]])
        [row] = pack([(ids, np.ones(len(ids), np.uint8))], len(ids))
        train_step(model, optimizer, [row.as_batch()], seq_length=len(ids), micro_batch_size=1,
                   forward_step=packed_forward_step, reduction="sum")
        if phase == "after a step" and cfg.rlvr.engine == "vllm":
            cfg.rlvr.vllm.transport = "disk"
        pushed = engine.push_weights(model, cfg.model.arch)
    engine.close()
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    runtime.teardown()


if __name__ == "__main__":
    from tulu_mcore.runtime.logs import quiet_known_warnings

    quiet_known_warnings()
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
