"""megatron -> HF: the ``tulu-convert mcore-to-hf`` job.

The checkpoint is read one tensor at a time straight from its global (layout-independent) form, turned
into HF tensors by the same mapping table as everything else, and written as it arrives: memory holds
one tensor, whatever the model size, and no model or parallel layout is built. Under torchrun the
output shards are divided among the ranks; each rank reads only the tensors of its shards. Rank 0 then
writes the index, ``config.json`` (the original one when the weights came from HF) and the
tokenizer/generation files that travelled with the checkpoint.

Weights of a *live* model at any layout take the other path, :func:`tulu_mcore.convert.export.
export_hf_weights`, which gathers TP shards and pipeline stages.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Iterator

import torch

from tulu_mcore.arch import LlamaArch
from tulu_mcore.checkpoint.dist import SIDE_DIR, checkpoint_arch, checkpoint_dtype
from tulu_mcore.checkpoint.reader import CheckpointReader
from tulu_mcore.convert.hf_io import StreamingSafetensorsWriter
from tulu_mcore.errors import CheckpointError, UserError
from tulu_mcore.models.llama.mapping import hf_shapes, shards_to_hf, units
from tulu_mcore.runtime.logs import progress as progress_bar

DEFAULT_MAX_SHARD_BYTES = 2 << 30


def hf_config_for(meta: dict, dtype: torch.dtype) -> dict:
    arch = checkpoint_arch(meta)
    cfg = dict(meta["hf_config"]) if meta.get("hf_config") else arch.to_hf_config(dtype)
    name = str(dtype).removeprefix("torch.")
    keys = [k for k in ("torch_dtype", "dtype") if k in cfg] or ["torch_dtype"]  # transformers 4 / 5
    for k in keys:
        cfg[k] = name
    if meta.get("head", "lm") == "score":  # a reward model: one score per sequence, at its last token
        cfg.update(architectures=["LlamaForSequenceClassification"], id2label={"0": "LABEL_0"},
                   label2id={"LABEL_0": 0}, num_labels=1)
        # HF scores each row at its last token that is not pad_token_id; the score belongs to the EOS
        # that closes the response, so an EOS pad id would move it one token back: drop it (batches
        # then need a real pad token: set pad_token_id to one the tokenizer has)
        eos = cfg.get("eos_token_id")
        eos = set(eos) if isinstance(eos, list) else {eos}
        if cfg.get("pad_token_id") in eos:
            cfg["pad_token_id"] = None
    return cfg


def checkpoint_hf_tensors(reader: CheckpointReader, arch: LlamaArch, wanted=lambda name: True,
                          head: str = "lm") -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) in checkpoint order, read one megatron tensor at a time; megatron tensors whose
    HF tensors are all unwanted are not read."""
    for _, _, rule, hf_names, candidates in units(1, arch, 1, [arch.num_hidden_layers], head=head):
        if not any(wanted(n) for n in hf_names):
            continue
        key = next((c for c in candidates if reader.has(c)), None)
        if key is None:
            raise CheckpointError(f"{reader.path}: no tensor {' or '.join(candidates)} in the checkpoint")
        yield from shards_to_hf(rule, hf_names, [reader.read(key)], arch)


def prefetch(items: Iterator, depth: int = 2) -> Iterator:
    """Produce `items` in a background thread, up to `depth` ahead: reading the next tensor overlaps
    writing the current one (both release the GIL in file I/O)."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def run():
        try:
            for item in items:
                q.put(item)
        except BaseException as e:  # re-raised in the consumer
            q.put(e)
        q.put(done)

    threading.Thread(target=run, daemon=True).start()
    while (item := q.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def serve_as_trained(out: Path, arch) -> None:
    """The export renders and stops as it was trained: the Tülu chat template in tokenizer_config.json
    (replacing one the base model's tokenizer brought, e.g. Meta's; no BOS: the template has none and
    `apply_chat_template` adds no special tokens) and a generation_config.json whose EOS is the token
    every trained turn ended with."""
    from tulu_mcore.data.template import CHAT_TEMPLATE

    cfg_file = out / "tokenizer_config.json"
    if not cfg_file.is_file():
        return  # no tokenizer travelled with the checkpoint: nothing to render with
    (out / "chat_template.jinja").unlink(missing_ok=True)  # it would win over tokenizer_config.json
    tok_cfg = json.loads(cfg_file.read_text())
    tok_cfg["chat_template"] = CHAT_TEMPLATE
    cfg_file.write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(out))
        eos, pad = tok.eos_token_id, tok.pad_token_id
    except Exception as e:  # a tokenizer transformers cannot load here: config.json's EOS, said
        print(f"warning: {out}: the tokenizer does not load ({type(e).__name__}: {e}); generation_config.json "
              "takes config.json's eos_token_id", file=sys.stderr)
        eos, pad = None, None
    gen = {"bos_token_id": arch.bos_token_id, "eos_token_id": eos if eos is not None else arch.eos_token_id}
    if pad is not None:
        gen["pad_token_id"] = pad
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


def convert_mcore_to_hf(ckpt_dir: str, out_dir: str, *, overwrite: bool = False, dtype: str | None = None,
                        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, progress: bool = True) -> Path:
    import torch.distributed as dist

    from tulu_mcore.dtypes import TORCH_DTYPES
    from tulu_mcore.runtime.distributed import detect_env, init_process_group

    reader = CheckpointReader(ckpt_dir)
    meta = reader.meta
    arch = checkpoint_arch(meta)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out}: exists and is not empty; choose another directory or pass --overwrite")
    torch_dtype = TORCH_DTYPES[dtype] if dtype else checkpoint_dtype(meta)
    env = detect_env()
    if env.world_size > 1:
        init_process_group("cpu", env)
    rank, ranks = env.rank, env.world_size
    tmp = out.with_name(out.name + ".partial")
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    if ranks > 1:
        dist.barrier()
    head = meta.get("head", "lm")
    shapes = hf_shapes(arch, head)
    writer = StreamingSafetensorsWriter(tmp, shapes, torch_dtype, max_shard_bytes, rank=rank, ranks=ranks)
    bar = progress_bar(sum(writer.wants(n) for n in shapes), "export", "tensor", enabled=progress and rank == 0)
    for name, t in prefetch(checkpoint_hf_tensors(reader, arch, writer.wants, head)):
        writer.add(name, t)
        bar.update(int(writer.wants(name)))
    bar.close()
    writer.finish_rank()
    if ranks > 1:
        dist.barrier()
    if rank == 0:
        writer.write_index()
        (tmp / "config.json").write_text(json.dumps(hf_config_for(meta, torch_dtype), indent=2) + "\n")
        side = Path(ckpt_dir) / SIDE_DIR
        if side.is_dir():
            for f in side.iterdir():
                shutil.copy2(f, tmp / f.name)
        serve_as_trained(tmp, arch)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    if ranks > 1:
        dist.barrier()
    return out

