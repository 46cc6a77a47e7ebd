"""HF <-> megatron conversion: parity with transformers at every layout, bit-identical round trips, and
checkpoints that reshard across layouts."""

import json
import re

import pytest
import torch

from tests import rank_pool
from tests.conftest import convert, hf_tensors, read_json, run_cli, run_worker
from tulu_mcore.convert.hf_io import HFCheckpoint
from tulu_mcore.convert.verify import FP32_TOL, VerifyArgs, prompt_tokens
from tulu_mcore.convert.verify import reference_logits as reference_logits_of

LAYOUTS = {
    "tp1": [],
    "tp2": ["--tp", "2"],
    "tp2_sp": ["--tp", "2", "--sp"],
    "pp2": ["--pp", "2"],
    "pp2_vpp2": ["--pp", "2", "--vpp", "2"],
    "cp2": ["--cp", "2"],
}


@pytest.fixture(scope="module")
def reference_logits(tiny_hf):
    """transformers' logits (eager attention, fp32) of each tiny model on verify's fixed prompt: the
    reference every layout is held to, computed once per model."""
    a = VerifyArgs("", "")
    out = {}
    for kind, hf in tiny_hf.items():
        a.hf_dir = str(hf)
        out[kind] = reference_logits_of(a, prompt_tokens(str(hf), HFCheckpoint(hf).arch.vocab_size, a.length), "fp32")
    return out


@pytest.mark.parametrize("kind,layout", [
    pytest.param(kind, layout, marks=[pytest.mark.fast] if (kind, layout) == ("untied", "tp1") else [])
    for kind in ("untied", "tied") for layout in LAYOUTS])
def test_logits_match_transformers(tiny_hf, tiny_ckpt, reference_logits, tmp_path, kind, layout):
    # verify's own ranks (the worker tulu-convert verify starts) against the transformers reference
    logits = _logits(tiny_hf[kind], tiny_ckpt[kind], tmp_path, layout, *LAYOUTS[layout])
    ref = reference_logits[kind]
    assert logits.shape == ref.shape == (1, 64, 512)
    assert (logits - ref).abs().max().item() <= FP32_TOL, (layout, (logits - ref).abs().max().item())
    # the prompt's logits are large enough for the bound to mean something
    assert ref.abs().max().item() > 1.0


def test_verify_command_end_to_end(tiny_hf, tiny_ckpt):
    # the command a user runs: its own ranks, the reference in the driver, the verdict as the last line
    proc = convert("verify", tiny_hf["tied"], tiny_ckpt["tied"], "--tp", "2", "--sp")
    last = proc.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"max_abs_logit_diff=(\S+)", last)
    assert m, proc.stdout
    assert float(m.group(1)) <= 1e-4 and "within_tolerance=True" in proc.stdout
    assert float(re.search(r"max_abs_logit=(\S+)", proc.stdout).group(1)) > 1.0
    assert "layout=tp2 pp1 vpp1 cp1 sp1" in proc.stdout


def test_verify_fails_on_wrong_weights(tiny_hf, tiny_ckpt):
    # the untied checkpoint against the tied model's directory: a different architecture
    proc = convert("verify", tiny_hf["tied"], tiny_ckpt["untied"], check=False)
    assert proc.returncode == 2 and "different architecture" in proc.stderr


@pytest.mark.parametrize("kind", [pytest.param("untied", marks=pytest.mark.fast), "tied"])
def test_round_trip_is_bit_identical(tiny_hf, tiny_ckpt, tmp_path, kind):
    out = tmp_path / "hf"
    convert("mcore-to-hf", tiny_ckpt[kind], out, "--max-shard-size", "300KB")
    a, b = hf_tensors(tiny_hf[kind]), hf_tensors(out)
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    # sharded with an index, config.json as it was, side files carried along
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(a) and len(set(index["weight_map"].values())) > 1
    assert json.loads((out / "config.json").read_text()) == json.loads((tiny_hf[kind] / "config.json").read_text())
    assert (out / "generation_config.json").is_file()
    # transformers loads it and computes the same logits
    from transformers import LlamaForCausalLM

    ids = torch.randint(0, 512, (1, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = LlamaForCausalLM.from_pretrained(tiny_hf[kind]).eval()(ids).logits
        got = LlamaForCausalLM.from_pretrained(out).eval()(ids).logits
    assert torch.equal(ref, got)


def _logits(hf, ckpt, tmp_path, name, *layout):
    out = tmp_path / f"{name}.pt"
    proc = rank_pool.run("tulu_mcore.convert.verify", [str(hf), str(ckpt), *layout, "--logits-out", str(out)],
                         _world(layout))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out)["logits"]


def _world(layout):
    n = 1
    for flag in ("--tp", "--pp", "--cp"):
        if flag in layout:
            n *= int(layout[layout.index(flag) + 1])
    return n


def test_checkpoint_saved_at_tp2_loads_at_pp2_and_tp1(tiny_hf, tiny_ckpt, tmp_path):
    hf = tiny_hf["untied"]
    ckpt_tp2 = tmp_path / "ckpt_tp2"
    proc = rank_pool.run("tulu_mcore.cli.convert", ["hf-to-mcore", str(hf), str(ckpt_tp2), "--tp", "2"], 2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    tp1 = _logits(hf, ckpt_tp2, tmp_path, "tp1")
    pp2 = _logits(hf, ckpt_tp2, tmp_path, "pp2", "--pp", "2")
    ref = _logits(hf, tiny_ckpt["untied"], tmp_path, "ref")  # converted by one process
    assert torch.equal(tp1, pp2)
    assert torch.equal(tp1, ref)


@pytest.mark.parametrize("kind,layout", [("untied", "tp2"), ("tied", "pp2_vpp2"), ("tied", "pp2"), ("untied", "cp2")])
def test_live_export_stream_at_layouts(tiny_hf, tiny_ckpt, tmp_path, kind, layout):
    # the library path RL weight sync uses: TP shards gathered, pipeline stages sent to rank 0
    from tulu_mcore.models.llama.mapping import hf_shapes

    out = tmp_path / "export.json"
    run_worker("export_live.py", [tiny_hf[kind], tiny_ckpt[kind], out, f"parallel={layout}"], nproc=2)
    got = read_json(out)
    arch = HFCheckpoint(tiny_hf[kind]).arch
    assert got["names"] == list(hf_shapes(arch))  # every tensor once, in checkpoint order
    assert got["mismatched"] == []
    assert got["buckets"] > 1


def test_mcore_to_hf_under_torchrun_splits_shards(tiny_hf, tiny_ckpt, tmp_path):
    out = tmp_path / "hf"
    proc = rank_pool.run("tulu_mcore.cli.convert", ["mcore-to-hf", str(tiny_ckpt["untied"]), str(out),
                                                    "--max-shard-size", "200KB"], 2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    a, b = hf_tensors(tiny_hf["untied"]), hf_tensors(out)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert len(list(out.glob("model-*.safetensors"))) > 2


def test_cli_help_explains_commands():
    proc = run_cli("tulu_mcore.cli.convert", "--help", check=True)
    for word in ("hf-to-mcore", "mcore-to-hf", "verify", "torchrun"):
        assert word in proc.stdout
    proc = run_cli("tulu_mcore.cli.convert", "verify", "--help", check=True)
    assert "max_abs_logit_diff" in proc.stdout and "--cp" in proc.stdout
