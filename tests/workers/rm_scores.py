"""Worker: a reward model's scores of the first preference-demo pairs, from a checkpoint at the layout
the overrides give (the scores of packed rows, whole over CP). Rank 0 writes the token ids and scores.

    torchrun --nproc-per-node N tests/workers/rm_scores.py CKPT_OR_RUN_DIR CACHE_DIR OUT.json [hydra overrides...]
"""

import json
import math
import sys

import torch


def main(ckpt: str, cache_dir: str, out: str, overrides: list[str]) -> None:
    import torch.distributed as dist

    from tulu_mcore import runtime
    from tulu_mcore.checkpoint.dist import checkpoint_arch, load_model, read_meta
    from tulu_mcore.checkpoint.run import resolve_checkpoint
    from tulu_mcore.config.compose import compose
    from tulu_mcore.data.cache import prepare
    from tulu_mcore.data.packing import pack
    from tulu_mcore.data.sources import TINY_TOKENIZER, source_specs
    from tulu_mcore.data.tokenizer import load_tokenizer
    from tulu_mcore.models.factory import build_model
    from tulu_mcore.training.sequences import sequence_scores
    from tulu_mcore.training.step import packed_forward

    ckpt = resolve_checkpoint(ckpt)  # a run directory: its latest checkpoint
    cfg = compose(["runtime.device=cpu", "model.attention=sdpa", *overrides])
    cfg.model.arch = checkpoint_arch(read_meta(ckpt))
    rt = runtime.setup(cfg, training=False)
    lay = rt.layout
    [model] = build_model(cfg.model.arch, lay, cfg.precision, device="cpu", attention="sdpa", init=False,
                          head="score")
    load_model([model], ckpt)
    model.eval()
    data = prepare(source_specs("builtin:preference-demo"), load_tokenizer(TINY_TOKENIZER), cache_dir=cache_dir,
                   max_seq_len=128, truncate=True, on_error="strict", seed=0, kind="pairs", log=lambda m: None)
    examples = [e for i in range(6) for e in data.unit(i)]
    multiple = math.lcm(2 * lay.cp if lay.cp > 1 else 1, lay.tp if lay.sp else 1)
    [row] = pack(examples, 2048, multiple=multiple, pad_id=1, group_size=2)
    with torch.no_grad():
        output, local = packed_forward(row.as_batch(), model, labels=False)
        scores = sequence_scores(output, local, row.num_seqs)
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump({"ids": [e[0].tolist() for e in examples], "scores": scores.tolist()}, f)
    runtime.teardown()


if __name__ == "__main__":
    from tulu_mcore.runtime.logs import quiet_known_warnings

    quiet_known_warnings()
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
