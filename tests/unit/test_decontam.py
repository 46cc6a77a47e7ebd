"""tulu-decontam: Tülu 3's definition (an eval instance matches when more than 50 % of its tokens are
covered by 8-grams shared with one training instance; a source is contaminated above 2 % of an eval set),
checked on planted overlaps with written-out expectations and against a brute-force implementation of
the definition on random data."""

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from tulu_mcore.data import decontam
from tulu_mcore.data.decontam import EvalIndex, words

W = [f"w{i}" for i in range(2000)]  # distinct words


def text(ids) -> str:
    return " ".join(W[i] for i in ids)


def brute_force(evals: list[list[str]], units: list[list[str]], n: int, t: float) -> set[tuple[int, int]]:
    """(unit, eval instance) pairs by the definition, with sets and nothing shared with the module."""
    out = set()
    for u, toks in enumerate(units):
        grams = {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}
        for e, ev in enumerate(evals):
            if len(ev) < n:
                continue
            covered = set()
            for i in range(len(ev) - n + 1):
                if tuple(ev[i:i + n]) in grams:
                    covered.update(range(i, i + n))
            if len(covered) / len(ev) > t:
                out.add((u, e))
    return out


def test_words_as_stated():
    assert words("Don't STOP: 3.14 times, O’Neil!  ﬁne") == ["don't", "stop", "3.14", "times", "o’neil", "fine"]


def test_training_instances_of_every_row_format():
    conv = [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"}, {"role": "assistant", "content": "a"},
            {"role": "user", "content": "u2"}]
    assert decontam.train_texts({"messages": conv}) == ["u1", "u2"]
    assert decontam.train_texts({"chosen": conv, "rejected": conv}) == ["u1", "u2"]
    # the preference format with strings: the prompt is the instance, the responses are not
    assert decontam.train_texts({"prompt": "p", "chosen": "c", "rejected": "r"}) == ["p"]
    assert decontam.train_texts({"prompt": conv[:2], "chosen": "c"}) == ["u1"]


def test_planted_overlaps():
    ev = list(range(100, 120))  # 20 tokens
    evals = [text(ev)]
    units = {
        "copy": text([1, 2] + ev + [3]),
        "11 of 20 (55 %)": text([5] + ev[:11] + [6]),
        "10 of 20 (50 %, not above)": text(ev[:10]),
        "9 of 20": text(ev[11:]),
        "first 8": text(ev[:8]),  # with "last 10": 18 of 20 together, but two instances
        "last 10": text(ev[10:]),
        "runs of 8 and 9 in one instance: 17": text(ev[:8] + [7] + ev[11:]),
        "runs of 8 and 5: the 5 cover nothing": text(ev[:8] + [7] + ev[15:]),
        "7 tokens: no 8-gram": text(ev[:7]),
        "other words": text(range(200, 240)),
    }
    index = EvalIndex.build(evals, 8)
    got = {list(units)[u] for u, _ in index.matches(list(units.values()), 0.5)}
    assert got == {"copy", "11 of 20 (55 %)", "runs of 8 and 9 in one instance: 17"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_brute_force_on_random_data(seed):
    rng = random.Random(seed)
    vocab = 30  # few words: many chance 8-gram overlaps besides the planted ones
    evals = [[rng.randrange(vocab) for _ in range(rng.randrange(4, 40))] for _ in range(120)]
    units = []
    for _ in range(400):
        toks = [rng.randrange(vocab) for _ in range(rng.randrange(0, 60))]
        if rng.random() < 0.4:  # plant a slice of an eval instance
            ev = rng.choice(evals)
            a = rng.randrange(len(ev))
            b = rng.randrange(a, len(ev) + 1)
            cut = rng.randrange(len(toks) + 1)
            toks = toks[:cut] + ev[a:b] + toks[cut:]
        units.append(toks)
    index = EvalIndex.build([text(e) for e in evals], 8)
    want = brute_force([[f"w{i}" for i in e] for e in evals], [[f"w{i}" for i in u] for u in units], 8, 0.5)
    got = set(index.matches([text(u) for u in units], 0.5))
    assert got == want and len(want) >= 15


def test_hash_collisions_cannot_make_a_match(monkeypatch):
    """Every window hashing alike (the worst collisions): the token-by-token check keeps only real hits."""
    monkeypatch.setattr(decontam, "_multipliers", lambda n, seed=0: np.zeros(n, dtype=np.uint64))
    rng = random.Random(5)
    evals = [[rng.randrange(50) for _ in range(20)] for _ in range(30)]
    units = [rng.choice(evals)[:12] + [rng.randrange(50) for _ in range(10)] for _ in range(40)]
    index = EvalIndex.build([text(e) for e in evals], 8)
    assert set(index.matches([text(u) for u in units], 0.5)) == brute_force(
        [[f"w{i}" for i in e] for e in evals], [[f"w{i}" for i in u] for u in units], 8, 0.5)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_cli(*args, env_offline: bool = False):
    import os

    env = {**os.environ, **({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"} if env_offline else {})}
    return subprocess.run([sys.executable, "-m", "tulu_mcore.cli.decontam", *map(str, args)], capture_output=True,
                          text=True, env=env)


def test_report_and_filtered_copies(tmp_path):
    """50 eval instances: one matched is 2 % (not above the threshold), two are 4 % (contaminated). A row
    whose two user turns each cover half of an instance does not match (instances are user turns)."""
    evals = [text(range(300 + 20 * i, 320 + 20 * i)) for i in range(50)]
    gsm = _jsonl(tmp_path / "gsm.jsonl", [{"question": e} for e in evals])
    math = _jsonl(tmp_path / "math.jsonl", [{"problem": e} for e in evals[:25]] +
                  [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text(range(1500, 1530))}]}])
    user = lambda t: {"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": "ok"}]}
    one = _jsonl(tmp_path / "one.jsonl", [user("hello there"), user(evals[3]), user(text(range(1, 9)))])
    two = _jsonl(tmp_path / "two.jsonl", [
        {"prompt": evals[0]},
        {"messages": [{"role": "user", "content": text(range(1500, 1515))}, {"role": "assistant", "content": "x"},
                      {"role": "user", "content": text(range(1515, 1530))}]},  # 15 + 15 of 30: split over turns
        {"prompt": [{"role": "user", "content": "words " + evals[1] + " more"}]},
        {"chosen": [{"role": "user", "content": "unrelated"}], "rejected": []}])
    proc = run_cli("--train", one, two, "--eval", gsm, math, "--out", tmp_path / "out", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    rows = {(r["train"], r["eval"]): r for r in report["rows"]}
    assert [(r["matched_eval_instances"], r["eval_instances"], r["contaminated"]) for r in report["rows"]] == [
        (1, 50, False), (1, 26, True), (2, 50, True), (2, 26, True)]
    r = rows[(str(one), str(gsm))]
    assert r["matched_fraction"] == 0.02 and r["matched_train"] == [f"{one}:2"] and r["train_fraction"] == 1 / 3
    assert rows[(str(two), str(gsm))]["matched_train"] == [f"{two}:1", f"{two}:3"]
    assert rows[(str(two), str(math))]["matched_train_instances"] == 2  # evals[0] and [1] are in math too
    assert report["filtered"][str(two)] == {"path": str(tmp_path / "out" / "two.jsonl"), "rows": 4, "removed": 2,
                                            "kept": 2}
    kept = (tmp_path / "out" / "two.jsonl").read_text().splitlines()
    assert kept == two.read_text().splitlines()[1:2] + two.read_text().splitlines()[3:]  # byte for byte
    assert (tmp_path / "out" / "one.jsonl").read_text().splitlines() == [one.read_text().splitlines()[i] for i in (0, 2)]
    assert "| " in (tmp_path / "out" / "report.md").read_text() and "CONTAMINATED" in proc.stdout


def test_bad_input_is_one_error_line(tmp_path):
    ev = _jsonl(tmp_path / "e.jsonl", [{"question": "a b c"}])
    no_text = _jsonl(tmp_path / "t.jsonl", [{"messages": [{"role": "user", "content": "x"}]}, {"answer": 3}])
    for args, message in (
            (["--train", no_text, "--eval", ev], f"error: {no_text}:2: no user turn"),
            (["--train", ev, "--eval", no_text], f"error: {no_text}:2: no text: expected a 'prompt'"),
            (["--train", tmp_path / "missing.jsonl", "--eval", ev], "error: data source"),
            (["--train", no_text, "--eval", ev, "--threshold", "1.5"], "expected a fraction")):
        proc = run_cli(*args, "--out", tmp_path / "out")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and message in proc.stderr, proc.stderr


def test_an_instance_of_several_fields_scores_the_mean_of_its_fields(tmp_path):
    """open-instruct's multi-field sets (DROP: passage + question): each field's covered share, averaged;
    a null field leaves the instance out (counted apart), as the release skipped it."""
    passage, question = list(range(500, 520)), list(range(600, 610))  # 20 and 10 tokens
    evals = _jsonl(tmp_path / "drop.jsonl", [{"passage": text(passage), "question": text(question)},
                                             {"passage": None, "question": text(question)}])
    user = lambda ids: {"messages": [{"role": "user", "content": text(ids)}]}  # noqa: E731
    train = _jsonl(tmp_path / "t.jsonl", [
        user(question + [1] + passage[:9]),  # (10/10 + 9/20) / 2 = 0.725: a match
        user(question),  # (1 + 0) / 2 = 0.5: not above
        user(passage[:9] + [2] + passage[11:]),  # (18/20 + 0) / 2 = 0.45
    ])
    proc = run_cli("--train", train, "--eval", f"{evals},fields=passage+question", "--out", tmp_path / "out",
                   "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads((tmp_path / "out" / "report.json").read_text())["rows"]
    assert row["eval"] == str(evals) and row["eval_instances"] == 1 and row["skipped_eval_instances"] == 1
    assert row["matched_eval_instances"] == 1 and row["matched_train"] == [f"{train}:1"]


def test_presets_and_eval_specs():
    from tulu_mcore.data.decontam import PRESETS, EvalSet, parse_eval
    from tulu_mcore.errors import UserError

    tulu3 = parse_eval("preset:tulu3")
    assert len(tulu3) == 20 and tulu3 == list(PRESETS["tulu3_dev"] + PRESETS["tulu3_unseen"])
    by_name = {e.name: e for e in tulu3}
    assert by_name["openai/gsm8k/main"] == EvalSet("openai/gsm8k", "main", "test", ("question",))
    assert by_name["ucinlp/drop"].fields == ("passage", "question") and by_name["ucinlp/drop"].split == "validation"
    assert by_name["akariasai/PopQA"].fields == ("subj", "prop", "obj")
    assert by_name["deepmind/math_dataset"].limit == 50 and by_name["google/IFEval"].split == "train"
    assert parse_eval("x.jsonl,fields=a+b,limit=3") == [EvalSet("x.jsonl", None, "test", ("a", "b"), 3)]
    for bad in ("preset:tulu4", "x.jsonl,field=a", "x.jsonl,limit=0"):
        with pytest.raises(UserError):
            parse_eval(bad)


def test_an_eval_set_that_is_not_here_is_one_error(tmp_path):
    train = _jsonl(tmp_path / "t.jsonl", [{"prompt": "a b c"}])
    proc = run_cli("--train", train, "--eval", "no-such-org/no-such-set,split=test", "--out", tmp_path / "o",
                   env_offline=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "error: eval set no-such-org/no-such-set: neither a local file nor a dataset" in proc.stderr
