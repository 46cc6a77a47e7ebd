"""Read whole tensors of a torch_dist checkpoint by key: no model, no process group, one at a time.

The global layout of a megatron checkpoint does not depend on the layout it was saved at (TP shards
and pipeline stages are stored as pieces of one global tensor per key), so reading a key returns
the same tensor whatever layout wrote it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from tulu_mcore.checkpoint import unpickle
from tulu_mcore.checkpoint.dist import read_meta
from tulu_mcore.errors import CheckpointError


class CheckpointReader:
    def __init__(self, ckpt_dir: str | Path):
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        self.path = Path(ckpt_dir)
        self.meta = read_meta(self.path)
        unpickle.install()  # .metadata through an allow-list
        self._reader = FileSystemReader(str(self.path))
        try:
            md = self._reader.read_metadata()
        except CheckpointError:
            raise
        except Exception as e:  # a truncated or foreign .metadata pickle
            raise CheckpointError(f"{self.path / '.metadata'}: unreadable ({type(e).__name__}: {e})") from None
        self._tensors = {
            k: v for k, v in md.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)
        }

    def has(self, key: str) -> bool:
        return key in self._tensors

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensors[key].size)

    def read(self, key: str) -> torch.Tensor:
        import torch.distributed.checkpoint as dcp

        if key not in self._tensors:
            raise CheckpointError(f"{self.path}: tensor {key} is not in the checkpoint")
        info = self._tensors[key]
        out = {key: torch.empty(tuple(info.size), dtype=info.properties.dtype)}
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore")
            try:
                dcp.load(out, storage_reader=self._reader, no_dist=True)
            except Exception as e:  # missing or truncated .distcp files surface here
                raise CheckpointError(f"{self.path}: cannot read {key} ({type(e).__name__}: {e})") from None
        return out[key]
