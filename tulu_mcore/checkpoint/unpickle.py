"""Every pickle in a checkpoint is read through an allow-list: a crafted file is refused, never run.

A checkpoint given as ``model.init``, resumed, converted or exported may come from anyone, and a
torch_dist checkpoint holds pickles in five places:

* ``.metadata``, torch DCP's index (torch reads it with a plain ``pickle.load``): read here with an
  unpickler that resolves only DCP's metadata classes, ``torch.Size``, dtypes and layouts;
* the byte items inside ``*.distcp`` (megatron's common state: step, schedule, data cursor, the
  optimizer's param groups; each layer's ``_extra_state``), which torch DCP loads with
  ``weights_only=False``: checked with ``weights_only=True`` first (the same bytes, in memory);
* a legacy ``common.pt`` (megatron before the common state moved into the DCP files): ``weights_only=True``;
* ``rng/rank_NNNNN.pt``, each rank's RNG state: ``weights_only=True``. NumPy arrays (NumPy's RNG state)
  are written as raw bytes, dtype and shape (`encode`); files written before hold pickled ndarrays and
  still load, with NumPy's array reconstruction as the only extra globals;
* Transformer Engine's ``_extra_state`` (FP8 scaling metadata: a pickle inside a uint8 tensor, which TE
  reads with ``pickle.loads``): checked by `check_extra_state` before it reaches TE.

`install()` puts the first three into torch DCP's reader and load planner and megatron's loader, for every
load in the process (megatron's, `CheckpointReader`'s). Anything outside the allow-lists raises
`CheckpointError`, naming the file and what it asked for.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tulu_mcore.errors import CheckpointError

_DCP_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.planner": {
        "SavePlan", "WriteItem", "WriteItemType", "TensorWriteData", "LoadPlan", "ReadItem", "LoadItemType",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "collections": {"OrderedDict"},
}
# the pickled ndarrays of RNG files written before `encode` (NumPy 2's names; the state is uint32)
_NUMPY_ARRAYS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]
_ARRAY = "__numpy_array__"


class _ItemRefused(CheckpointError):
    """A refused byte item of a ``.distcp`` file: the message starts with the file's name."""


def refused(where: Any, what: str) -> CheckpointError:
    return CheckpointError(
        f"{where}: holds {what}, which tulu_mcore never writes into a checkpoint; refusing to load it "
        "(a crafted or foreign file: nothing in it was run)"
    )


def _what(e: Exception) -> str:
    m = (re.search(r"GLOBAL ([\w.]+)", str(e)) or re.search(r"^global ([\w.]+)$", str(e))
         or re.search(r"but got <class '([\w.]+)'>", str(e)))
    if m:
        return f"a reference to {m.group(1)}"
    detail = next((ln.strip() for ln in str(e).splitlines() if "unsupported" in ln.lower()), "")
    return "pickled objects outside the allow-list" + (f" ({detail})" if detail else "")


def torch_load(src, where: Any, *, numpy_arrays: bool = False):
    """``torch.load(weights_only=True)`` of a file (or bytes buffer) we wrote; `CheckpointError` for
    anything else. `numpy_arrays`: also accept pickled ndarrays (RNG files written before `encode`)."""
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAYS if numpy_arrays else []):
            return torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise refused(where, _what(e)) from None
    except (RuntimeError, EOFError, ValueError, TypeError, AttributeError) as e:  # truncated, not torch.save
        raise CheckpointError(f"{where}: unreadable ({type(e).__name__}: {str(e).splitlines()[0]})") from None


class _AllowList(pickle.Unpickler):
    """A pickle reader that resolves only the globals `allowed(module, name)` accepts."""

    def __init__(self, f, allowed):
        super().__init__(f)
        self._allowed = allowed

    def find_class(self, module, name):
        if self._allowed(module, name):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name}")


def _dcp_global(module: str, name: str) -> bool:
    if name in _DCP_CLASSES.get(module, ()):
        return True
    return module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout))


def read_dcp_metadata(f, where: Any):
    """torch DCP's ``.metadata`` from an open binary file, through the allow-list."""
    try:
        return _AllowList(f, _dcp_global).load()
    except pickle.UnpicklingError as e:
        raise refused(where, _what(e)) from None
    except (EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError, KeyError) as e:
        raise CheckpointError(f"{where}: unreadable ({type(e).__name__}: {e})") from None


def check_metadata(ckpt_dir) -> None:
    """Read a checkpoint's ``.metadata`` through the allow-list up front: torch DCP turns a reader's error
    into an AssertionError text (after trying per-rank files), so a refusal is clearest here."""
    path = Path(ckpt_dir) / ".metadata"
    with open(path, "rb") as f:
        read_dcp_metadata(f, path)


def install() -> None:
    """Route torch DCP's ``.metadata`` reads and byte-item loads, and megatron's legacy ``common.pt``
    load, through the allow-lists (once per process)."""
    from megatron.core.dist_checkpointing import serialization
    from megatron.core.dist_checkpointing.strategies.common import COMMON_STATE_FNAME
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    if getattr(FileSystemReader, "_tulu_allow_list", False):
        return

    def read_metadata(self, *args, **kwargs):  # torch's, with the allow-list instead of pickle.load
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as f:
            metadata = read_dcp_metadata(f, path)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    original_load_bytes = DefaultLoadPlanner.load_bytes

    def load_bytes(self, read_item, value):
        info = getattr(self, "metadata", None) and self.metadata.storage_data.get(read_item.storage_index)
        where = f"{info.relative_path if info else '?'} (item {read_item.storage_index.fqn})"
        try:  # the same bytes torch's planner then loads with weights_only=False
            torch_load(value, where)
        except CheckpointError as e:
            raise _ItemRefused(str(e)) from None
        value.seek(0)
        return original_load_bytes(self, read_item, value)

    def load_common(checkpoint_dir):
        path = Path(checkpoint_dir) / COMMON_STATE_FNAME
        if not path.is_file():
            raise CheckpointError(f"{path}: not found")
        return torch_load(path, path)

    FileSystemReader.read_metadata = read_metadata
    DefaultLoadPlanner.load_bytes = load_bytes
    serialization.load_common = load_common
    FileSystemReader._tulu_allow_list = True


def unwrap_dcp_error(e: BaseException, ckpt_dir) -> BaseException:
    """torch DCP wraps what its readers raise in its own CheckpointException: our refusal, if it holds one
    (with the checkpoint's directory in front of the file name), else `e` itself."""
    for exc, _ in getattr(e, "failures", {}).values():
        if isinstance(exc, _ItemRefused):
            return CheckpointError(f"{ckpt_dir}/{exc}")
        if isinstance(exc, CheckpointError):
            return exc
    return e


# ----------------------------------------------------------------------------- RNG state, NumPy arrays
def encode(obj):
    """NumPy arrays and scalars (NumPy's RNG state) as raw bytes + dtype + shape, so that the RNG file
    loads with ``weights_only=True``; everything else as it is."""
    if isinstance(obj, (np.ndarray, np.generic)):
        a = np.ascontiguousarray(obj)
        if a.dtype.hasobject:
            raise TypeError("object arrays cannot be saved in a checkpoint's RNG state")
        data = torch.from_numpy(np.frombuffer(a.tobytes(), dtype=np.uint8).copy())
        return {_ARRAY: {"dtype": a.dtype.str, "shape": list(a.shape), "scalar": isinstance(obj, np.generic),
                         "data": data}}
    if isinstance(obj, dict):
        return type(obj)((k, encode(v)) for k, v in obj.items())
    if type(obj) in (list, tuple):
        return type(obj)(encode(v) for v in obj)
    return obj


def decode(obj, where: Any = "RNG state"):
    """The inverse of `encode` (files written before it hold ndarrays, which pass through)."""
    if isinstance(obj, dict) and set(obj) == {_ARRAY}:
        spec = obj[_ARRAY]
        try:
            a = np.frombuffer(spec["data"].numpy().tobytes(), dtype=np.dtype(spec["dtype"]))
            a = a.reshape(spec["shape"]).copy()
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{where}: a malformed array ({type(e).__name__}: {e})") from None
        return a[()] if spec.get("scalar") else a
    if isinstance(obj, dict):
        return type(obj)((k, decode(v, where)) for k, v in obj.items())
    if type(obj) in (list, tuple):
        return type(obj)(decode(v, where) for v in obj)
    return obj


# ----------------------------------------------------------------------------- Transformer Engine
def _safe_storage_from_bytes(b):
    return torch_load(io.BytesIO(b), "a tensor inside Transformer Engine's extra state")


def _extra_state_global(module: str, name: str) -> bool:
    if (module, name) in {("torch._utils", "_rebuild_tensor_v2"), ("torch.storage", "_load_from_bytes"),
                          ("megatron.core.safe_globals", "safe_load_from_bytes"),  # megatron's pickler's name
                          ("collections", "OrderedDict"), ("torch", "Size")}:
        return True
    if module == "torch":
        return isinstance(getattr(torch, name, None), torch.dtype)
    return module == "transformer_engine.common.recipe"  # FP8 recipes: dataclasses and enums


class _ExtraStateReader(_AllowList):
    def __init__(self, f):
        super().__init__(f, _extra_state_global)

    def find_class(self, module, name):
        if (module, name) in (("torch.storage", "_load_from_bytes"),  # a nested torch.save: weights only
                              ("megatron.core.safe_globals", "safe_load_from_bytes")):
            return _safe_storage_from_bytes
        cls = super().find_class(module, name)
        if module == "transformer_engine.common.recipe" and not isinstance(cls, type):
            raise pickle.UnpicklingError(f"global {module}.{name}")
        return cls


def check_extra_state(state: dict, where: Any) -> None:
    """Refuse a model state whose ``_extra_state`` pickles (Transformer Engine's FP8 metadata, unpickled by
    TE with ``pickle.loads``) hold anything but tensors, containers and TE's recipe classes."""
    for key, value in state.items():
        if not key.endswith("_extra_state") or not torch.is_tensor(value) or value.dtype != torch.uint8:
            continue
        if value.numel() == 0:
            continue
        try:
            _ExtraStateReader(io.BytesIO(value.detach().cpu().numpy().tobytes())).load()
        except pickle.UnpicklingError as e:
            raise refused(f"{where} ({key})", _what(e)) from None
        except CheckpointError:
            raise
        except Exception as e:  # anything else a malformed pickle raises
            raise CheckpointError(f"{where} ({key}): unreadable ({type(e).__name__}: {e})") from None
