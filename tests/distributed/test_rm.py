"""Reward model through `tulu-train recipe=rm`: pair accuracy rises, and the exported HF
LlamaForSequenceClassification reproduces the Megatron scores (computed at TP2 with SP, and at CP2)."""

import json

import pytest
import torch

from tests.conftest import builtin_rows, metrics, read_json, run_worker, train


@pytest.fixture(scope="module")
def rm_run(sft_hf, tmp_path_factory):
    root = tmp_path_factory.mktemp("rm")
    held = builtin_rows(root / "held.jsonl", "builtin:preference-demo", 16)
    train(["recipe=rm", f"run.dir={root / 'run'}", f"data.cache_dir={root / 'data'}", "runtime.device=cpu",
           "metrics.progress=false", f"model.init={sft_hf}", "train.epochs=3", "train.max_steps=24", "optim.lr=2e-3",
           f"eval.data={held}",
           "eval.every_steps=12"])
    return root


def test_pair_accuracy_rises(rm_run):
    m = metrics(rm_run / "run")
    assert len(m) == 24
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    first, last = m[:4], m[-4:]
    assert mean(last, "accuracy") >= 0.75 and mean(last, "accuracy") > mean(first, "accuracy") + 0.15
    assert mean(last, "loss") < mean(first, "loss") - 0.1
    assert mean(last, "margin") > 0.5
    # held-out evaluation (eval.data) after steps 12 and 24: pairs seen in training, scored right by the end
    evals = [r for r in m if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [12, 24] and evals[-1]["eval/pairs"] == 16
    assert evals[-1]["eval/accuracy"] >= 0.75 and evals[-1]["eval/margin"] > 0.5


@pytest.mark.parametrize("layout", [["parallel.tp=2", "parallel.sp=true"], ["parallel.cp=2"]])
def test_hf_export_reproduces_megatron_scores(rm_run, layout, tmp_path):
    from transformers import AutoModelForSequenceClassification

    hf = rm_run / "run" / "hf"
    config = read_json(hf / "config.json")
    assert config["architectures"] == ["LlamaForSequenceClassification"] and config["num_labels"] == 1
    out = tmp_path / "scores.json"
    run_worker("rm_scores.py", [rm_run / "run", rm_run / "data", out, *layout], nproc=2)
    got = json.loads(out.read_text())
    model = AutoModelForSequenceClassification.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = [model(torch.tensor([ids])).logits[0, 0].item() for ids in got["ids"]]
    assert len(ref) == 12 and max(abs(r) for r in ref) > 0.5  # scores of a trained head, not ~0
    assert max(abs(a - b) for a, b in zip(ref, got["scores"])) <= 1e-4, (ref, got["scores"])


@pytest.mark.parametrize("layout", [["parallel.tp=2", "parallel.sp=true"], ["parallel.pp=2"]])
def test_first_step_is_the_same_at_every_layout(rm_run, sft_hf, layout, tmp_path):
    """The head starts from the same seeded draw whatever the layout (and not from uninitialised memory
    when the body comes from a language model), and the loss does not depend on the layout."""
    train(["recipe=rm", f"run.dir={tmp_path / 'run'}", f"data.cache_dir={rm_run / 'data'}", "runtime.device=cpu",
           "metrics.progress=false", f"model.init={sft_hf}", "train.max_steps=1", "train.export_hf=false",
           *layout], nproc=2)
    ref, got = metrics(rm_run / "run")[0], metrics(tmp_path / "run")[0]
    assert abs(ref["loss"] - 0.6931471805599453) > 1e-3  # the random head separates the pair's scores
    assert abs(got["loss"] - ref["loss"]) <= 1e-5 and got["accuracy"] == ref["accuracy"], (got, ref)


def test_reward_model_round_trips_through_tulu_convert(rm_run, tmp_path):
    from safetensors.torch import load_file

    from tests.conftest import convert

    hf = rm_run / "run" / "hf"
    convert("hf-to-mcore", hf, tmp_path / "mcore")
    assert read_json(tmp_path / "mcore" / "tulu_mcore.json")["head"] == "score"
    convert("mcore-to-hf", tmp_path / "mcore", tmp_path / "hf")
    assert read_json(tmp_path / "hf" / "config.json")["architectures"] == ["LlamaForSequenceClassification"]
    a = {k: v for f in hf.glob("*.safetensors") for k, v in load_file(f).items()}
    b = {k: v for f in (tmp_path / "hf").glob("*.safetensors") for k, v in load_file(f).items()}
    assert "score.weight" in a and a.keys() == b.keys() and "lm_head.weight" not in b
    assert all(torch.equal(a[k], b[k]) for k in a)
