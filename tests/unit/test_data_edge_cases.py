"""Malformed data: every bad row is an error naming file:line (strict) or a counted skip (skip), a
file that cannot be read at all is one error naming it, never a traceback, a hang or silent garbage."""

import json
import os
import re
import time

import pytest

from tulu_mcore.data.preference import load_pairs
from tulu_mcore.data.rlvr import load_prompts
from tulu_mcore.data.sources import MAX_ROW_ENV, TINY_TOKENIZER, load_conversations, source_specs
from tulu_mcore.errors import UserError

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
GOOD_LINE = json.dumps(GOOD).encode()
PAIR = {"prompt": "2 + 2?", "chosen": "4", "rejected": "5"}
PROMPT = {"messages": [{"role": "user", "content": "1 + 1?"}], "ground_truth": "2", "dataset": "gsm8k"}


def _with_content(text: str) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": text}]}
                      ).encode()


# (a bad JSON Lines line, the skip reason, what the strict error says)
BAD_LINES = {
    "long integer": (b'{"messages": [], "n": ' + b"7" * 5000 + b"}", "invalid JSON", "more than 4300 digits"),
    "deep nesting": (b'{"messages": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", "invalid JSON", "nested too deeply"),
    "invalid UTF-8": (_with_content("caf").replace(b"caf", b"caf\xe9"), "invalid text", "not UTF-8 text"),
    "lone surrogate": (_with_content("x\ud800y"), "invalid text", "lone UTF-16 surrogate"),
    "duplicate key": (b'{"messages": [{"role": "user", "role": "assistant", "content": "hi"}]}', "duplicate key",
                      "the key 'role' twice"),
    "not JSON": (b"{oops", "invalid JSON", "not valid JSON"),
}


def _write(path, lines: list[bytes]):
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return str(path)


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_jsonl_line_is_a_bad_row(tmp_path, case):
    line, reason, message = BAD_LINES[case]
    path = _write(tmp_path / "d.jsonl", [GOOD_LINE, line, GOOD_LINE])
    got = load_conversations(source_specs(path), on_error="skip", seed=0)
    assert len(got.conversations) == 2 and got.examples_seen == 3 and dict(got.skipped) == {reason: 1}
    assert got.origins == [f"{path}:1", f"{path}:3"]
    with pytest.raises(UserError, match=rf"^{path}:2: .*{re.escape(message)}.*data.on_error=skip"):
        load_conversations(source_specs(path), on_error="strict", seed=0)


def test_strict_stops_at_the_first_bad_row_in_file_order(tmp_path):
    path = _write(tmp_path / "d.jsonl", [GOOD_LINE, b'{"messages": [{"role": "robot", "content": "x"}]}', b"{oops"])
    with pytest.raises(UserError, match=rf"^{path}:2: "):
        load_conversations(source_specs(path), on_error="strict", seed=0)


@pytest.mark.parametrize("content, message", [
    (b"\xef\xbb\xbf[" + b"\xff" + b"]", r":1: not UTF-8 text"),
    (b'[{"n": ' + b"9" * 5000 + b"}]", r": cannot parse it: a number with more than 4300 digits.*\.jsonl"),
    (b"[" * 200_000 + b"]" * 200_000, r": cannot parse it: JSON nested too deeply"),
    (b"[1, 2", r":1: not valid JSON"),
])
def test_unreadable_json_file_is_one_error(tmp_path, content, message):
    path = tmp_path / "d.json"
    path.write_bytes(content)
    with pytest.raises(UserError, match=rf"^{path}{message}"):
        load_conversations(source_specs(str(path)), on_error="skip", seed=0)


def test_json_file_rows_with_surrogates_or_duplicate_keys(tmp_path):
    path = tmp_path / "d.json"
    dup = '{"messages": [{"role": "user", "content": "a", "content": "b"}]}'
    path.write_text("[" + ", ".join([json.dumps(GOOD), json.dumps({"messages": [{"role": "user", "content": "\ud800"}]}),
                                     dup]) + "]")
    got = load_conversations(source_specs(str(path)), on_error="skip", seed=0)
    assert len(got.conversations) == 1 and dict(got.skipped) == {"invalid text": 1, "duplicate key": 1}
    with pytest.raises(UserError, match=rf"{path}\[#1\]: a lone UTF-16 surrogate"):
        load_conversations(source_specs(str(path)), on_error="strict", seed=0)


@pytest.mark.parametrize("loader, row", [(load_conversations, GOOD), (load_pairs, PAIR), (load_prompts, PROMPT)])
def test_no_usable_rows_is_one_clear_error(tmp_path, loader, row):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match=rf"no usable \w+ in {empty}: 0 read, skipped: none; it is empty"):
        loader(source_specs(str(empty)), on_error="skip", seed=0)
    bad = _write(tmp_path / "bad.jsonl", [b"{oops", json.dumps({"x": 1}).encode()])
    with pytest.raises(UserError, match=rf"no usable \w+ in {bad}: 2 read, skipped: {{'invalid JSON': 1, "):
        loader(source_specs(bad), on_error="skip", seed=0)


def test_fifo_is_refused_before_opening(tmp_path):
    fifo = tmp_path / "d.jsonl"
    os.mkfifo(fifo)
    t0 = time.time()
    with pytest.raises(UserError, match=rf"^{fifo}: a FIFO \(named pipe\), not a regular file"):
        load_conversations(source_specs(str(fifo)), on_error="skip", seed=0)
    assert time.time() - t0 < 5


def test_rows_over_the_size_limit(tmp_path, monkeypatch):
    monkeypatch.setenv(MAX_ROW_ENV, "0.001")  # 1,000 bytes
    long = _with_content("y" * 5000)
    path = _write(tmp_path / "d.jsonl", [GOOD_LINE, long, GOOD_LINE])
    got = load_conversations(source_specs(path), on_error="skip", seed=0)
    assert len(got.conversations) == 2 and dict(got.skipped) == {"row too long": 1}
    with pytest.raises(UserError, match=rf"{path}:2: a line of 5,0\d\d bytes .*{MAX_ROW_ENV}=0.001 MB"):
        load_conversations(source_specs(path), on_error="strict", seed=0)
    as_json = tmp_path / "d.json"
    as_json.write_text(json.dumps([GOOD, json.loads(long)]))
    got = load_conversations(source_specs(str(as_json)), on_error="skip", seed=0)
    assert dict(got.skipped) == {"row too long": 1}
    monkeypatch.setenv(MAX_ROW_ENV, "1")
    assert len(load_conversations(source_specs(path), on_error="strict", seed=0).conversations) == 3
    monkeypatch.setenv(MAX_ROW_ENV, "lots")
    with pytest.raises(UserError, match=f"{MAX_ROW_ENV}='lots': expected a positive number"):
        load_conversations(source_specs(path), on_error="strict", seed=0)


def test_empty_assistant_turns_are_kept_as_released(tmp_path):
    """Tülu's released code trains an empty assistant turn (its EOS only): so do we, in SFT and in pairs."""
    rows = [PAIR, {**PAIR, "chosen": ""}, {"chosen": GOOD["messages"],
                                           "rejected": GOOD["messages"][:1] + [{"role": "assistant", "content": " "}]}]
    path = _write(tmp_path / "p.jsonl", [json.dumps(r).encode() for r in rows])
    got = load_pairs(source_specs(path), on_error="strict", seed=0)
    assert len(got.pairs) == 3 and not got.skipped
    conv = _write(tmp_path / "c.jsonl", [_with_content("")])
    assert len(load_conversations(source_specs(conv), on_error="strict", seed=0).conversations) == 1


@pytest.mark.parametrize("dataset, truth, message", [
    ("ifeval", "validate_uppercase", "not valid JSON"),
    ("ifeval", "[1, 2]", "not a JSON object"),
    ("ifeval", '{"func_name": "validate_shouting"}', "unknown func_name 'validate_shouting'"),
    ("ifeval", '{"N": 3}', "unknown func_name None"),
    ("MATH", "\\frac{1}{2", "unbalanced braces"),
    ("MATH", "\\boxed{}", r"an empty or unreadable \\boxed\{\} answer"),
    ("math", "   ", "ground_truth must be a non-empty string"),
])
def test_unverifiable_ground_truths(tmp_path, dataset, truth, message):
    good = [PROMPT, {**PROMPT, "dataset": "MATH", "ground_truth": "\\frac{1}{2}"},
            {**PROMPT, "dataset": "ifeval", "ground_truth": '{"func_name": "validate_lowercase", "N": null}'}]
    path = _write(tmp_path / "p.jsonl", [json.dumps(r).encode() for r in good + [
        {**PROMPT, "dataset": dataset, "ground_truth": truth}]])
    if truth.strip():  # kept by default, as the release kept them (they score 0), and reported with file:line
        kept = load_prompts(source_specs(path), on_error="strict", seed=0)
        assert [p.problem is None for p in kept.prompts] == [True, True, True, False]
        assert len(kept.unverifiable) == 1 and re.match(rf"{re.escape(str(path))}:4: .*{message}", kept.unverifiable[0])
        assert kept.warning().startswith("warning: 1 prompt(s) have a ground truth no verifier can use; kept")
    got = load_prompts(source_specs(path), on_error="skip", seed=0, unverifiable="bad")
    assert [p.dataset for p in got.prompts] == ["gsm8k", "math", "ifeval"] and sum(got.skipped.values()) == 1
    with pytest.raises(UserError, match=rf"{path}:4: .*{message}"):
        load_prompts(source_specs(path), on_error="strict", seed=0, unverifiable="bad")


def _inspect(capsys, *args) -> tuple[int, str, str]:
    """`tulu-data inspect ARGS` in this process: (exit code, stdout, stderr)."""
    from tulu_mcore.cli.data import main

    try:
        main(["inspect", "--tokenizer", str(TINY_TOKENIZER), *map(str, args)])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_inspect_shows_rlvr_prompts_and_refuses_empty_data(tmp_path, capsys):
    bad = {**PROMPT, "dataset": "ifeval", "ground_truth": "nope"}
    path = _write(tmp_path / "p.jsonl", [json.dumps(PROMPT).encode(), json.dumps(bad).encode()])
    code, out, err = _inspect(capsys, "--data", path, "--prompts", "--on-error", "skip", "--unverifiable", "bad")
    assert code == 0, err
    [rec] = [json.loads(line) for line in out.splitlines()]
    assert rec["origin"] == f"{path}:1" and rec["dataset"] == "gsm8k" and rec["ground_truth"] == "2"
    assert rec["text"] == "<|user|>\n1 + 1?\n<|assistant|>\n" and len(rec["input_ids"]) == rec["prompt_tokens"]
    assert "skipped: {'bad ground truth': 1}" in err
    code, out, err = _inspect(capsys, "--data", path, "--prompts")  # kept by default, marked and warned
    recs = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(recs) == 2 and "not valid JSON" in recs[1]["unverifiable"] and "unverifiable" not in recs[0]
    assert f"{path}:2: ifeval ground_truth 'nope'" in err and "kept, as the release did" in err
    code, out, err = _inspect(capsys, "--data", "builtin:rlvr-demo", "--prompts", "--limit", "2")
    assert code == 0 and len(out.splitlines()) == 2, err
    code, out, err = _inspect(capsys, "--data", "builtin:rlvr-demo")  # forgot --prompts: a hint, no traceback
    assert code == 2 and "rlvr_demo.jsonl:1: no assistant message" in err and "add --pairs or --prompts" in err
    assert "add --on-error skip" in err
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    for kind in ([], ["--pairs"], ["--prompts"]):
        code, out, err = _inspect(capsys, "--data", empty, *kind)
        assert code == 2 and "no usable" in err and f"{empty}: 0 read" in err and not out
