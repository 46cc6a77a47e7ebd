"""Worker: load a checkpoint into a model at one layout, stream its weights with export_hf_weights
(small buckets), and on rank 0 compare every tensor with the HF directory it came from.

    torchrun --nproc-per-node N tests/workers/export_live.py HF_DIR CKPT OUT.json [hydra overrides...]
"""

import json
import sys

import torch


def main(hf_dir: str, ckpt: str, out: str, overrides: list[str]) -> None:
    import torch.distributed as dist

    from tulu_mcore import runtime
    from tulu_mcore.checkpoint.dist import checkpoint_arch, load_model, read_meta
    from tulu_mcore.config.compose import compose
    from tulu_mcore.convert.export import export_hf_weights
    from tulu_mcore.convert.hf_io import HFCheckpoint
    from tulu_mcore.models.factory import build_model

    device = [] if any(o.startswith("runtime.device=") for o in overrides) else ["runtime.device=cpu"]
    cfg = compose([*device, *overrides])
    cfg.model.arch = checkpoint_arch(read_meta(ckpt))
    rt = runtime.setup(cfg, training=False)
    chunks = build_model(cfg.model.arch, rt.layout, cfg.precision, device=rt.device, attention="sdpa", init=False)
    load_model(chunks, ckpt)
    names, buckets, mismatched = [], 0, []
    hf = HFCheckpoint(hf_dir) if dist.get_rank() == 0 else None
    for bucket in export_hf_weights(chunks, cfg.model.arch, bucket_bytes=100_000):
        buckets += 1
        for name, t in bucket:
            names.append(name)
            if not torch.equal(t, hf.read(name)):
                mismatched.append(name)
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump({"names": names, "buckets": buckets, "mismatched": mismatched}, f)
    else:
        assert not names  # only rank 0 receives tensors
    runtime.teardown()


if __name__ == "__main__":
    from tulu_mcore.runtime.logs import quiet_known_warnings

    quiet_known_warnings()
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
