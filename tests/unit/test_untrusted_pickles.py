"""Checkpoint pickles load through allow-lists (tulu_mcore/checkpoint/unpickle.py): a crafted file that
would run code when unpickled is refused with a CheckpointError naming it, and nothing in it runs; the
RNG state round-trips exactly, and RNG files written before (pickled ndarrays) still load."""

import io
import os
import pickle
import random

import numpy as np
import pytest
import torch

from tulu_mcore.checkpoint import unpickle
from tulu_mcore.errors import CheckpointError


class Planted:
    """Runs a shell command when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "tracker": {"model-parallel-rng": torch.get_rng_state()}}


def _assert_refused(excinfo, where, marker):
    msg = str(excinfo.value)
    assert msg.startswith(f"{where}: holds a reference to posix.system"), msg
    assert "refusing to load it" in msg and "nothing in it was run" in msg, msg
    assert not marker.exists(), "the planted pickle ran"


def test_rng_state_round_trips_with_weights_only(tmp_path):
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    np.random.standard_normal()  # a cached Gaussian in NumPy's state
    state = _rng_state()
    path = tmp_path / "rank_00000.pt"
    torch.save(unpickle.encode(state), path)
    torch.load(path, weights_only=True)  # no global beyond torch's defaults
    back = unpickle.decode(unpickle.torch_load(path, path), path)
    assert back["python"] == state["python"]
    name, keys, pos, has_gauss, cached = back["numpy"]
    assert (name, pos, has_gauss, cached) == (state["numpy"][0], *state["numpy"][2:])
    assert keys.dtype == state["numpy"][1].dtype and np.array_equal(keys, state["numpy"][1])
    assert torch.equal(back["torch"], state["torch"])
    np.random.set_state(back["numpy"])
    expected = np.random.random(4)
    np.random.set_state(state["numpy"])
    assert np.array_equal(np.random.random(4), expected)


def test_rng_file_written_before_still_loads(tmp_path):
    state = _rng_state()
    path = tmp_path / "rank_00000.pt"
    torch.save(state, path)  # the old form: NumPy's state as a pickled ndarray
    back = unpickle.decode(unpickle.torch_load(path, path, numpy_arrays=True), path)
    assert np.array_equal(back["numpy"][1], state["numpy"][1]) and back["numpy"][2:] == state["numpy"][2:]
    with pytest.raises(CheckpointError, match="numpy"):  # only where the RNG file is read
        unpickle.torch_load(path, path)


def test_planted_rng_file_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "rank_00000.pt"
    torch.save({"python": random.getstate(), "numpy": Planted(marker)}, path)
    with pytest.raises(CheckpointError) as e:
        unpickle.torch_load(path, path, numpy_arrays=True)
    _assert_refused(e, path, marker)


def test_planted_dcp_metadata_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / ".metadata"
    path.write_bytes(pickle.dumps({"state_dict_metadata": Planted(marker)}))
    with pytest.raises(CheckpointError) as e, open(path, "rb") as f:
        unpickle.read_dcp_metadata(f, path)
    _assert_refused(e, path, marker)


def test_dcp_metadata_allow_list_reads_what_torch_writes():
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorProperties,
        TensorStorageMetadata,
    )

    chunks = [ChunkStorageMetadata(torch.Size([0, 0]), torch.Size([2, 3]))]
    md = Metadata(
        state_dict_metadata={"w": TensorStorageMetadata(TensorProperties(dtype=torch.bfloat16),
                                                        torch.Size([2, 3]), chunks)},
        storage_data={MetadataIndex("w", torch.Size([0, 0])): _StorageInfo("__0_0.distcp", 0, 24)},
    )
    back = unpickle.read_dcp_metadata(io.BytesIO(pickle.dumps(md)), "x")
    assert back.state_dict_metadata["w"].properties.dtype == torch.bfloat16
    assert back.storage_data == md.storage_data


def test_transformer_engine_extra_state_is_checked(tmp_path):
    marker = tmp_path / "MARKER"

    def as_tensor(obj):
        return torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)

    te_state = {"scale_fwd": torch.ones(3), "extra_fp8_variables": {"num_gemms": 1}}
    fine = {"layer._extra_state": as_tensor(te_state),
            "empty._extra_state": torch.empty(0, dtype=torch.uint8), "none._extra_state": None}
    unpickle.check_extra_state(fine, "ckpt")
    with pytest.raises(CheckpointError) as e:
        unpickle.check_extra_state({"layer._extra_state": as_tensor({"recipe": Planted(marker)})}, "ckpt")
    _assert_refused(e, "ckpt (layer._extra_state)", marker)
