"""Hugging Face model directories: a validated, slice-reading view, and a sharded safetensors writer.

Reading goes through ``safe_open(...).get_slice``: only the bytes of the requested rows or columns are
read, so a rank of a large conversion touches only its own shard. Every problem with the input (no
config.json, not a Llama, a missing or truncated shard, a tensor of the wrong shape) is a UserError
naming the file.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import threading
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from tulu_mcore.arch import LlamaArch, read_json
from tulu_mcore.errors import UserError
from tulu_mcore.models.llama.mapping import hf_shapes

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# Files that travel with the weights (tokenizer, chat template, generation defaults).
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "generation_config.json",
)
ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
_DTYPE_SIZE = {"F32": 4, "BF16": 2, "F16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1}


def _read_header(path: Path) -> dict:
    """The safetensors header, after checking that the file holds every byte it promises."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise UserError(f"{path}: truncated safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                raise UserError(f"{path}: corrupt safetensors header (claims {n} bytes, file has {size})")
            header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: corrupt safetensors header (not JSON)") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        end = max(end, info["data_offsets"][1])
    if 8 + n + end > size:
        raise UserError(
            f"{path}: truncated safetensors file (tensor data ends at byte {8 + n + end}, file has "
            f"{size}); download or copy it again"
        )
    return header


class HFCheckpoint:
    """A Llama model directory in Hugging Face format (config.json + safetensors)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise UserError(f"{self.path}: not a directory (expected a Hugging Face model directory)")
        self.config = read_json(self.path / "config.json")
        self.arch = LlamaArch.from_hf_config(self.config, str(self.path / "config.json"))
        self._files = self._weight_files()
        self._where: dict[str, Path] = {}
        self._info: dict[str, dict] = {}
        for f in sorted(set(self._files)):
            for name, info in _read_header(f).items():
                if name != "__metadata__":
                    self._where[name] = f
                    self._info[name] = info
        # a LlamaForSequenceClassification (reward model) carries score.weight instead of lm_head
        self.head = "score" if "score.weight" in self._where else "lm"
        self._handles: dict[Path, object] = {}
        self._lock = threading.Lock()  # reads may come from several threads
        self._check()

    def _weight_files(self) -> list[Path]:
        index = self.path / INDEX
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise UserError(f"{index}: no 'weight_map' object")
            files = [self.path / f for f in weight_map.values()]
            for f in sorted(set(files)):
                if not f.is_file():
                    raise UserError(f"{f}: listed in {INDEX} but missing")
            return files
        if (self.path / SINGLE).is_file():
            return [self.path / SINGLE]
        if list(self.path.glob("*.bin")) or list(self.path.glob("*.pth")):
            raise UserError(
                f"{self.path}: only PyTorch .bin/.pth weights found; save the model with "
                "safetensors (model.save_pretrained(dir, safe_serialization=True))"
            )
        raise UserError(f"{self.path}: no {SINGLE} or {INDEX} found")

    def _check(self) -> None:
        for name, shape in hf_shapes(self.arch, self.head).items():
            if name not in self._where:
                raise UserError(f"{self.path}: tensor {name} is missing from the safetensors files")
            got = tuple(self._info[name]["shape"])
            if got != shape:
                raise UserError(
                    f"{self._where[name]}: tensor {name} has shape {list(got)} but config.json implies "
                    f"{list(shape)}"
                )
            if self._info[name]["dtype"] not in ST_DTYPES:
                raise UserError(f"{self._where[name]}: tensor {name} has unsupported dtype "
                                f"{self._info[name]['dtype']}")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the weights are stored in (that of the embedding)."""
        return ST_DTYPES[self._info["model.embed_tokens.weight"]["dtype"]]

    @property
    def nbytes(self) -> int:
        return sum(
            _DTYPE_SIZE[self._info[n]["dtype"]] * math.prod(self._info[n]["shape"]) for n in hf_shapes(self.arch, self.head)
        )

    def has(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._info[name]["shape"])

    def read(self, name: str, dim: int | None = None, start: int = 0, stop: int | None = None) -> torch.Tensor:
        f = self._where[name]
        try:
            with self._lock:
                h = self._handles.get(f)
                if h is None:
                    # pread, not mmap: bytes read are ordinary memory freed after the copy, rather
                    # than file pages mapped (and counted in RSS) for as long as the file stays open
                    h = self._handles[f] = safe_open(f, framework="pt", backend="pread")
            sl = h.get_slice(name)
            if dim is None:
                return sl[:]
            if dim == 0:
                return sl[start:stop]
            return sl[:, start:stop]
        except SafetensorError as e:
            raise UserError(f"{f}: cannot read tensor {name} ({e})") from None

    def close(self) -> None:
        self._handles.clear()

    def side_files(self) -> list[Path]:
        return [self.path / n for n in SIDE_FILES if (self.path / n).is_file()]


def copy_side_files(files: list[Path], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, dest / f.name)


class StreamingSafetensorsWriter:
    """Write HF tensors that arrive in a known order as ``model-0000i-of-0000N.safetensors`` + index.

    The shard plan (names, shapes, dtype) is fixed up front, so each file's safetensors header can be
    written before its data and every tensor is written the moment it arrives: memory holds one tensor,
    whatever the model size. (The safetensors library writes whole files from a dict of tensors.)
    With `ranks` > 1 this writer handles only the shards `i` with `i % ranks == rank`.
    """

    def __init__(self, out_dir: Path, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype,
                 max_shard_bytes: int, rank: int = 0, ranks: int = 1):
        self.out_dir = out_dir
        self.dtype = dtype
        self.st_dtype = {v: k for k, v in ST_DTYPES.items()}[dtype]
        esize = torch.empty(0, dtype=dtype).element_size()
        plan: list[list[str]] = [[]]
        used = 0
        for name, shape in shapes.items():
            nbytes = math.prod(shape) * esize
            if plan[-1] and used + nbytes > max_shard_bytes:
                plan.append([])
                used = 0
            plan[-1].append(name)
            used += nbytes
        n = len(plan)
        self.files = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self.plan = plan
        self.shapes = shapes
        self.shard_of = {name: i for i, names in enumerate(plan) for name in names}
        self.mine = {i for i in range(n) if i % ranks == rank}
        self.total_bytes = sum(math.prod(s) * esize for s in shapes.values())
        self._next = {i: 0 for i in self.mine}  # index of the next expected tensor in each shard
        self._open: dict[int, object] = {}

    def wants(self, name: str) -> bool:
        return self.shard_of[name] in self.mine

    def _start(self, i: int):
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        esize = torch.empty(0, dtype=self.dtype).element_size()
        for name in self.plan[i]:
            nbytes = math.prod(self.shapes[name]) * esize
            header[name] = {"dtype": self.st_dtype, "shape": list(self.shapes[name]),
                            "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the format aligns the data to 8 bytes
        f = open(self.out_dir / self.files[i], "wb")
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        return f

    def add(self, name: str, tensor: torch.Tensor) -> None:
        i = self.shard_of[name]
        if i not in self.mine:
            return
        expected = self.plan[i][self._next[i]]
        if name != expected or tuple(tensor.shape) != tuple(self.shapes[name]):
            raise RuntimeError(f"writer expected {expected} {self.shapes[expected]}, got {name} "
                               f"{tuple(tensor.shape)}")
        f = self._open.get(i) or self._open.setdefault(i, self._start(i))
        t = tensor.detach().to(device="cpu", dtype=self.dtype).contiguous()
        f.write(t.reshape(-1).view(torch.uint8).numpy().data)  # the tensor's own bytes, no copy
        self._next[i] += 1
        if self._next[i] == len(self.plan[i]):
            f.flush()
            os.fsync(f.fileno())
            f.close()
            del self._open[i]

    def finish_rank(self) -> None:
        """Check that this rank's shards are complete."""
        missing = [self.plan[i][self._next[i]] for i in self.mine if self._next[i] < len(self.plan[i])]
        if missing:
            raise RuntimeError(f"export ended before {missing[:3]} arrived")

    def write_index(self) -> None:
        index = {
            "metadata": {"total_size": self.total_bytes},
            "weight_map": {name: self.files[i] for name, i in self.shard_of.items()},
        }
        (self.out_dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")
