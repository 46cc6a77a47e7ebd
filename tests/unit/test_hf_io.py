"""Bad HF input -> one clear message naming the file (exit code 2 from the CLI, no traceback)."""

import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import convert
from tulu_mcore.convert.hf_io import HFCheckpoint, StreamingSafetensorsWriter
from tulu_mcore.errors import UserError
from tulu_mcore.models.llama.mapping import hf_shapes


@pytest.fixture
def hf_copy(tiny_hf, tmp_path):
    d = tmp_path / "hf"
    shutil.copytree(tiny_hf["untied"], d)
    return d


def test_reads_slices(tiny_hf):
    hf = HFCheckpoint(tiny_hf["untied"])
    full = hf.read("model.layers.0.self_attn.q_proj.weight")
    assert torch.equal(hf.read("model.layers.0.self_attn.q_proj.weight", 0, 16, 48), full[16:48])
    assert torch.equal(hf.read("model.layers.0.self_attn.o_proj.weight", 1, 32, 64),
                       hf.read("model.layers.0.self_attn.o_proj.weight")[:, 32:64])
    assert hf.dtype == torch.float32 and hf.arch.tie_word_embeddings is False


def _break(d, how):
    st = d / "model.safetensors"
    if how == "no_dir":
        shutil.rmtree(d)
    elif how == "no_config":
        (d / "config.json").unlink()
    elif how == "bad_json":
        (d / "config.json").write_text("{not json")
    elif how == "not_llama":
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
        (d / "config.json").write_text(json.dumps(cfg))
    elif how == "no_weights":
        st.unlink()
    elif how == "bin_only":
        st.unlink()
        (d / "pytorch_model.bin").write_bytes(b"x")
    elif how == "truncated":
        data = st.read_bytes()
        st.write_bytes(data[: len(data) - 1000])
    elif how == "bad_header":
        data = st.read_bytes()
        st.write_bytes(struct.pack("<Q", 10**12) + data[8:])
    elif how == "missing_tensor":
        t = load_file(st)
        del t["model.layers.2.mlp.up_proj.weight"]
        save_file(t, st)
    elif how == "wrong_shape":
        t = load_file(st)
        t["model.norm.weight"] = torch.ones(7)
        save_file(t, st)
    elif how == "index_missing_shard":
        st.rename(d / "model-00001-of-00002.safetensors")
        names = list(hf_shapes(_arch(d)))
        wm = {n: "model-00001-of-00002.safetensors" for n in names[:-1]}
        wm[names[-1]] = "model-00002-of-00002.safetensors"
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))


def _arch(d):
    from tulu_mcore.arch import LlamaArch

    return LlamaArch.from_hf_dir(d)


CASES = [
    ("no_dir", "not a directory"),
    ("no_config", "config.json: not found"),
    ("bad_json", "config.json: not valid JSON"),
    ("not_llama", "not a Llama checkpoint"),
    ("no_weights", "no model.safetensors or model.safetensors.index.json"),
    ("bin_only", "only PyTorch .bin/.pth weights"),
    ("truncated", "model.safetensors: truncated safetensors file"),
    ("bad_header", "model.safetensors: corrupt safetensors header"),
    ("missing_tensor", "model.layers.2.mlp.up_proj.weight is missing"),
    ("wrong_shape", "model.norm.weight has shape [7]"),
    ("index_missing_shard", "model-00002-of-00002.safetensors: listed in model.safetensors.index.json but missing"),
]


@pytest.mark.parametrize("how,needle", CASES)
def test_bad_input_is_a_user_error(hf_copy, how, needle):
    _break(hf_copy, how)
    with pytest.raises(UserError, match=needle.replace(".", "\\.").replace("[", "\\[")):
        HFCheckpoint(hf_copy)


@pytest.mark.parametrize("how,needle", [CASES[3], CASES[6]])
def test_cli_exit_code_2_without_traceback(hf_copy, tmp_path, how, needle):
    _break(hf_copy, how)
    proc = convert("hf-to-mcore", hf_copy, tmp_path / "out", check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_cli_refuses_foreign_checkpoint_dir(tiny_hf, tmp_path):
    proc = convert("mcore-to-hf", tiny_hf["untied"], tmp_path / "out", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not a megatron torch_dist checkpoint" in proc.stderr


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streaming_writer_output_reads_back(tmp_path, tiny_arch, dtype):
    shapes = hf_shapes(tiny_arch)
    limit = 200_000 if dtype == torch.float32 else 100_000
    tensors = {n: torch.randn(s).to(dtype) for n, s in shapes.items()}
    # two ranks, each writing its own shards (as under torchrun); rank 0 writes the index
    writers = [StreamingSafetensorsWriter(tmp_path, shapes, dtype, limit, rank=r, ranks=2) for r in (0, 1)]
    assert len(writers[0].files) > 2
    for w in writers:
        for n, t in tensors.items():
            w.add(n, t)
        w.finish_rank()
    writers[0].write_index()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(shapes)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    seen = {}
    for f in writers[0].files:
        assert (tmp_path / f).stat().st_size <= limit + 4096  # tensor bytes + the JSON header
        seen.update(load_file(tmp_path / f))  # the safetensors library reads what we wrote
    assert set(seen) == set(tensors)
    assert all(seen[n].dtype == dtype and torch.equal(seen[n], t) for n, t in tensors.items())


def test_streaming_writer_refuses_out_of_order(tmp_path, tiny_arch):
    w = StreamingSafetensorsWriter(tmp_path, hf_shapes(tiny_arch), torch.float32, 1 << 30)
    with pytest.raises(RuntimeError, match="expected model.embed_tokens.weight"):
        w.add("model.norm.weight", torch.ones(tiny_arch.hidden_size))


def test_interrupted_save_is_named(tmp_path):
    from tulu_mcore.checkpoint.dist import read_meta
    from tulu_mcore.errors import CheckpointError

    (tmp_path / "ckpt.partial").mkdir()
    with pytest.raises(CheckpointError, match="interrupted save left only ckpt.partial"):
        read_meta(tmp_path / "ckpt")
    (tmp_path / "other").mkdir()
    with pytest.raises(CheckpointError, match="not a megatron torch_dist checkpoint"):
        read_meta(tmp_path / "other")
