"""Worker: the summed token loss of demo conversations, packed into one THD row vs each one run on its
own (padded layout, one sequence per forward), through the same model. Rank 0 writes both as JSON.

    torchrun --nproc-per-node N tests/workers/packed_vs_unpacked.py CKPT OUT.json [hydra overrides...]
"""

import json
import math
import sys

import torch


def main(ckpt: str, out: str, overrides: list[str]) -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from tulu_mcore import runtime
    from tulu_mcore.checkpoint.dist import checkpoint_arch, load_model, read_meta
    from tulu_mcore.config.compose import compose
    from tulu_mcore.data.cache import prepare
    from tulu_mcore.data.packing import pack
    from tulu_mcore.data.sources import TINY_TOKENIZER, source_specs
    from tulu_mcore.data.tokenizer import load_tokenizer
    from tulu_mcore.models.factory import build_model
    from tulu_mcore.training.step import lm_forward_step, packed_forward_step

    cfg = compose(["runtime.device=cpu", "model.attention=sdpa", *overrides])
    cfg.model.arch = checkpoint_arch(read_meta(ckpt))
    rt = runtime.setup(cfg, training=False)
    lay = rt.layout
    [model] = build_model(cfg.model.arch, lay, cfg.precision, device="cpu", attention="sdpa", init=False)
    load_model([model], ckpt)
    model.eval()
    tok = load_tokenizer(TINY_TOKENIZER)
    data = prepare(source_specs("builtin:sft-demo"), tok, cache_dir=cfg.data.cache_dir, max_seq_len=128,
                   truncate=True, on_error="strict", seed=0, log=lambda m: None)
    examples = [data.example(i) for i in range(12)]
    multiple = math.lcm(2 * lay.cp if lay.cp > 1 else 1, lay.tp if lay.sp else 1)

    def run(step, batch):
        output, loss_fn = step(iter([batch]), model, reduction="token_mean")
        total, _, report = loss_fn(output)
        sums = report["lm"].clone()
        dist.all_reduce(sums, group=ps.get_context_parallel_group())  # CP ranks hold parts of a row
        return sums[0].item(), sums[1].item()

    with torch.no_grad():
        [row] = pack(examples, 1024, multiple=multiple, pad_id=1)
        packed = run(packed_forward_step, row.as_batch())
        single = [0.0, 0.0]
        for ids, trained in examples:
            n = -(-len(ids) // multiple) * multiple  # pad the sequence for CP's chunks
            tokens = torch.full((1, n), 1, dtype=torch.long)
            tokens[0, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            labels = torch.roll(tokens, -1, 1)
            mask = torch.zeros(1, n)
            mask[0, : len(ids) - 1] = torch.as_tensor(trained[1:], dtype=torch.float32)
            loss, count = run(lm_forward_step, {"tokens": tokens, "labels": labels, "loss_mask": mask})
            single[0] += loss
            single[1] += count
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump({"packed": packed, "unpacked": single, "rows_tokens": row.real_tokens}, f)
    runtime.teardown()


if __name__ == "__main__":
    from tulu_mcore.runtime.logs import quiet_known_warnings

    quiet_known_warnings()
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
