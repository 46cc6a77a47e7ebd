"""Three AdamW steps (distributed optimizer, gradient clipping) from one checkpoint on the same tokens:
every parallel layout reproduces the single-rank loss and gradient norm."""

import pytest

from tests.conftest import read_json, run_worker

OVERRIDES = ["train.global_batch_size=8", "train.seq_length=32", "optim.lr=3e-3", "optim.clip_grad=1.0",
             "optim.distributed=true"]
LAYOUTS = {"tp2": 2, "tp2_sp": 2, "pp2": 2, "pp2_vpp2": 2, "cp2": 2, "dp": 2}


@pytest.fixture(scope="module")
def reference(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "ref.json"
    run_worker("train_steps.py", [tiny_ckpt["untied"], out, "parallel=dp", *OVERRIDES], nproc=1)
    return read_json(out)["steps"]


@pytest.mark.fast
def test_reference_learns_and_clips(reference):
    losses = [s["loss"] for s in reference]
    assert losses[0] > losses[1] > losses[2]  # the same batch three times: the loss falls
    assert reference[0]["grad_norm"] > 1.0  # above the clip threshold: clipping is exercised
    assert all(s["tokens"] == reference[0]["tokens"] for s in reference)


@pytest.mark.parametrize("layout", [pytest.param(x, marks=pytest.mark.fast) if x == "tp2" else x for x in LAYOUTS])
def test_layout_reproduces_single_rank(reference, tiny_ckpt, tmp_path, layout):
    out = tmp_path / f"{layout}.json"
    run_worker("train_steps.py", [tiny_ckpt["untied"], out, f"parallel={layout}", *OVERRIDES], nproc=LAYOUTS[layout])
    got = read_json(out)
    lay = got["layout"]
    assert lay["world_size"] == 2 and (lay["dp"] == 2) == (layout == "dp")
    for step, (r, g) in enumerate(zip(reference, got["steps"])):
        assert g["tokens"] == r["tokens"]
        assert abs(g["loss"] - r["loss"]) <= 1e-5 * abs(r["loss"]), (step, g, r)
        assert abs(g["grad_norm"] - r["grad_norm"]) <= 1e-5 * abs(r["grad_norm"]), (step, g, r)


def test_runs_in_one_process_release_their_groups(data_cache, tmp_path):
    """Several runs in one process (a notebook, tulu-demo's launch): runtime.teardown releases each run's
    megatron process groups and their threads, keeping only the default group for the next run."""
    out = tmp_path / "groups.json"
    run_worker("process_groups.py", [out, tmp_path, "tp2", "pp2", "cp2", "tp2", "--", "recipe=sft",
                                     "runtime.device=cpu", "metrics.progress=false", f"data.cache_dir={data_cache}",
                                     "train.max_steps=2", "train.global_batch_size=8", "train.seq_length=128",
                                     "train.export_hf=false"], nproc=2)
    after = read_json(out)
    assert [a["layout"] for a in after] == ["tp2", "pp2", "cp2", "tp2"]
    assert all(a["groups"] == 1 for a in after), after
    # megatron's forgotten groups cost ~60 busy threads a run; a destroyed gloo group may keep its few
    # idle worker threads until the process ends
    assert after[-1]["threads"] - after[0]["threads"] <= 5 * (len(after) - 1), after
