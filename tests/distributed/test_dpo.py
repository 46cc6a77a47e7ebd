"""DPO end to end through `tulu-train recipe=dpo`: a reference cache built at TP1 gives, at TP2 and PP2,
the losses a live reference model gives; the tiny run learns its preferences; bad pairs and stale
caches are counted or refused."""

import json

import pytest

from tests.conftest import builtin_rows, metrics, train

STEPS = 3


def dpo_args(run_dir, cache, *extra):
    return ["recipe=dpo", f"run.dir={run_dir}", f"data.cache_dir={cache}", "runtime.device=cpu",
            "metrics.progress=false", "train.export_hf=false", *extra]


@pytest.fixture(scope="module")
def cache_run(sft_hf, tmp_path_factory):
    """Three steps with the reference cache, built at TP1 (2 data-parallel ranks) in its own directory."""
    root = tmp_path_factory.mktemp("dpo")
    ref = root / "refcache"
    held = builtin_rows(root / "held.jsonl", "builtin:preference-demo", 12)
    args = [f"model.init={sft_hf}", f"train.max_steps={STEPS}", "optim.lr=2e-3", "dpo.loss_type=dpo",
            "dpo.beta=0.5", f"eval.data={held}"]
    proc = train(dpo_args(root / "tp1", root / "data", f"dpo.reference_cache={ref}", *args), nproc=2)
    assert "reference log-probs: one forward pass over 320 pairs" in proc.stdout
    return root, ref, args


def losses(run_dir):
    return [m["loss"] for m in metrics(run_dir)]


@pytest.mark.parametrize("layout", ["parallel.tp=2", "parallel.pp=2"])
def test_cache_from_tp1_equals_live_reference(cache_run, layout):
    root, ref, args = cache_run
    name = layout.split("=")[0].split(".")[1]
    live = train(dpo_args(root / f"live_{name}", root / "data", "dpo.reference=live", layout, *args), nproc=2)
    assert "reference log-probs" not in live.stdout
    cached = train(dpo_args(root / f"cache_{name}", root / "data", f"dpo.reference_cache={ref}", layout, *args),
                   nproc=2)
    assert f"reference log-probs from {ref}" in cached.stdout  # reused, not recomputed
    a, b, c = losses(root / "tp1"), losses(root / f"live_{name}"), losses(root / f"cache_{name}")
    assert len(a) == len(b) == len(c) == STEPS
    assert abs(a[0] - 0.6931471805599453) < 1e-6  # the policy starts as the reference
    assert a[-1] < a[0] - 1e-3  # 100x the tolerance: later steps test the reference values, not just log 2
    for x, y, z in zip(a, b, c):
        assert abs(x - y) <= 1e-5 and abs(z - y) <= 1e-5, (a, b, c)
    # held-out evaluation (eval.data) after the last step: the same from a cache and a live reference
    evals = [[{k: v for k, v in m.items() if k.startswith("eval/")} for m in metrics(root / d)]
             for d in ("tp1", f"live_{name}", f"cache_{name}")]
    assert [bool(e) for e in evals[0]] == [False, False, True] and evals[0][2]["eval/pairs"] == 12
    for e in evals[1:]:
        for x, y in zip(evals[0], e):
            assert x.keys() == y.keys() and all(abs(x[k] - y[k]) <= 1e-5 for k in x), (x, y)


def test_stale_cache_refused(cache_run, tmp_path):
    root, ref, args = cache_run
    # the same directory for another length limit: other tokenized data
    proc = train(dpo_args(tmp_path / "run", root / "data", f"dpo.reference_cache={ref}", "data.max_seq_len=64",
                          *args), check=False)
    assert proc.returncode == 2
    assert f"error: {ref}: a stale reference log-prob cache" in proc.stderr and "data differs" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_tiny_dpo_learns_its_preferences(sft_hf, data_cache, tmp_path):
    train(dpo_args(tmp_path / "run", data_cache, f"model.init={sft_hf}", "train.epochs=2", "train.max_steps=16",
                   "optim.lr=2e-3"))
    m = metrics(tmp_path / "run")
    assert len(m) == 16
    first, last = m[:4], m[-4:]
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    assert mean(last, "accuracy") >= 0.75 and mean(last, "accuracy") > mean(first, "accuracy") + 0.2
    assert mean(last, "margin") > mean(first, "margin") + 0.2
    assert mean(last, "loss") < mean(first, "loss")


def test_bad_pairs_counted_or_refused(tmp_path, data_cache):
    prompt = [{"role": "user", "content": "What is 2 + 3?"}]
    good, bad = {"role": "assistant", "content": "5"}, {"role": "assistant", "content": "6"}
    rows = [{"chosen": prompt + [good], "rejected": prompt + [bad]}] * 8
    rows.insert(2, {"chosen": prompt + [good], "rejected": prompt + [good]})
    rows.insert(5, {"prompt": "What is 2 + 3?", "chosen": "5"})
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = dpo_args(tmp_path / "run", data_cache, f"data.train={path}", "train.global_batch_size=4",
                    "train.max_steps=1")
    proc = train(base, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: {path}:3: chosen and rejected responses are identical" in proc.stderr
    proc = train([*base, "data.on_error=skip"])
    assert "8 pairs (10 read; skipped: 1 identical chosen and rejected, 1 missing field" in proc.stdout


@pytest.mark.parametrize("reference", ["cache", "live"])
def test_resume_at_another_layout_continues_exactly(sft_hf, data_cache, tmp_path, reference):
    """Resume from the step-2 checkpoint of a 4-step run (at TP2 instead of DP2): steps 3 and 4 repeat
    the uninterrupted run's losses; a live reference is rebuilt from model.init, not from the trained
    policy."""
    run = tmp_path / "run"
    args = dpo_args(run, data_cache, f"model.init={sft_hf}", "train.max_steps=4", "train.save_interval=2",
                    "optim.lr=2e-3", f"dpo.reference={reference}")
    train(args, nproc=2)
    straight = {m["step"]: m["loss"] for m in metrics(run)}
    ckpts = run / "checkpoints"
    import shutil

    shutil.rmtree(ckpts / "step_00000004")
    (ckpts / "latest").write_text("step_00000002\n")
    proc = train([*args, "parallel.tp=2"], nproc=2)
    assert "resumed from" in proc.stdout and "step 2" in proc.stdout
    resumed = {m["step"]: m["loss"] for m in metrics(run)}
    for step in (3, 4):
        assert abs(resumed[step] - straight[step]) <= 1e-5, (step, resumed, straight)
