"""A checkpoint given as model.init (or converted) may come from anyone: a pickle planted in any of its
files that would run a shell command when unpickled is refused with a clear error naming the file, and the
command never runs (tulu_mcore/checkpoint/unpickle.py)."""

import json
import os
import pickle
import shutil

import pytest
import torch

from tests.conftest import convert, run_cli


class Planted:
    """Runs a shell command when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def sft_ckpt(sft_hf, tmp_path_factory):
    out = tmp_path_factory.mktemp("untrusted") / "ckpt"
    convert("hf-to-mcore", sft_hf, out)
    return out


def _plant_common_state(d, payload):
    """Replace megatron's common state (a byte item inside a .distcp file) with `payload`."""
    import io

    from torch.distributed.checkpoint import FileSystemReader

    md = FileSystemReader(str(d)).read_metadata()  # our own fixture's file: trusted here
    index = next(i for i in md.storage_data if i.fqn.startswith("common_state"))
    info = md.storage_data[index]
    buf = io.BytesIO()
    torch.save(payload, buf)
    with open(d / info.relative_path, "ab") as f:
        info.offset = f.tell()
        f.write(buf.getvalue())
    info.length = len(buf.getvalue())
    md.storage_meta = None
    (d / ".metadata").write_bytes(pickle.dumps(md))
    return info.relative_path


def _plant(d, where, marker) -> str:
    """Plant a pickle that touches `marker` in checkpoint `d`; the file the error must name."""
    if where == "rng":
        assert json.loads((d / "tulu_mcore.json").read_text())["world_size"] == 1  # so rank 0 reads it
        (d / "rng").mkdir()
        torch.save({"python": (3, (0,) * 625, None), "numpy": Planted(marker)}, d / "rng" / "rank_00000.pt")
        return str(d / "rng" / "rank_00000.pt")
    if where == "common.pt":  # megatron's legacy common-state file
        torch.save({"step": Planted(marker)}, d / "common.pt")
        return str(d / "common.pt")
    if where == "common_state":
        return f"{d}/{_plant_common_state(d, [{'step': Planted(marker)}])} (item common_state/shard_0_1)"
    assert where == ".metadata"
    (d / ".metadata").write_bytes(pickle.dumps(Planted(marker)))
    return str(d / ".metadata")


@pytest.mark.parametrize("where", ["rng", "common.pt", "common_state", ".metadata"])
def test_planted_pickle_is_refused_not_run(sft_ckpt, data_cache, tmp_path, where):
    crafted, marker = tmp_path / "crafted", tmp_path / "MARKER"
    shutil.copytree(sft_ckpt, crafted)
    named = _plant(crafted, where, marker)
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "2 + 2?"},
                                             {"role": "assistant", "content": "4"}]}) + "\n")
    proc = run_cli("tulu_mcore.cli.train", "recipe=sft", f"run.dir={tmp_path / 'run'}",
                   f"data.cache_dir={data_cache}", "runtime.device=cpu", "metrics.progress=false",
                   f"model.init={crafted}", f"data.train={data}", "train.global_batch_size=1",
                   "train.max_steps=1", "train.export_hf=false")
    assert not marker.exists(), "the planted pickle ran"
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = f"error: {named}: holds a reference to posix.system, which tulu_mcore never writes"
    assert error in proc.stderr and "refusing to load it" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if where == ".metadata":  # conversion reads it through the same allow-list
        proc = convert("mcore-to-hf", crafted, tmp_path / "hf", check=False)
        assert not marker.exists() and proc.returncode == 2 and error in proc.stderr, proc.stderr[-3000:]
