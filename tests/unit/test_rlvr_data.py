"""RLVR prompts: the row format, the generation prompt, bad rows, and the bundled demo prompts'
answers verified by the verifiers (correct ones pass, wrong ones fail)."""

import json
import re

import pytest

from tulu_mcore.data.rlvr import GENERATION_PROMPT, encode_prompts, load_prompts, prompt_text
from tulu_mcore.data.sources import TINY_TOKENIZER, source_specs
from tulu_mcore.data.tokenizer import load_tokenizer
from tulu_mcore.errors import UserError
from tulu_mcore.rewards import verify


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_prompt_rendering_and_tokens():
    msgs = [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "What is 2 + 3?"}]
    assert prompt_text(msgs) == "<|system|>\nBe exact.\n<|user|>\nWhat is 2 + 3?\n<|assistant|>\n"
    tok = load_tokenizer(TINY_TOKENIZER)
    loaded = load_prompts(source_specs("builtin:rlvr-demo"), on_error="strict", seed=0)
    ids = encode_prompts(loaded.prompts[:4], tok)
    for p, x in zip(loaded.prompts, ids):
        assert x[0] != tok.bos_token_id and tok.decode(x.tolist()) == prompt_text(p.messages)
        assert tok.decode(x.tolist()).endswith(GENERATION_PROMPT)


def test_bad_rows_counted_or_refused(tmp_path):
    good = {"messages": [{"role": "user", "content": "1 + 1?"}], "ground_truth": "2", "dataset": "GSM8K"}
    with_answer = {**good, "messages": good["messages"] + [{"role": "assistant", "content": "2"}]}
    rows = [good, with_answer, {**good, "dataset": "code"}, {"messages": good["messages"], "dataset": "gsm8k"},
            {**good, "messages": [{"role": "assistant", "content": "hi"}]}]
    path = write(tmp_path / "p.jsonl", rows)
    got = load_prompts(source_specs(path), on_error="skip", seed=0)
    assert [p.dataset for p in got.prompts] == ["gsm8k", "gsm8k"]
    assert got.prompts[1].messages == good["messages"]  # the reference answer is dropped
    assert dict(got.skipped) == {"unknown dataset": 1, "missing field": 1, "empty messages": 1}
    with pytest.raises(UserError, match=rf"{path}:3: dataset 'code' has no verifier"):
        load_prompts(source_specs(path), on_error="strict", seed=0)


def correct_response(p) -> str:
    if p.dataset == "gsm8k":
        return f"So we compute it. The answer is {p.ground_truth}."
    spec = json.loads(p.ground_truth)
    q = p.messages[-1]["content"]
    word = re.search(r"'(\w+)'", q)
    if spec["func_name"] == "validate_uppercase":
        return word.group(1).upper()
    if spec["func_name"] == "verify_keyword_frequency":
        return ", ".join([spec["word"]] * spec["N"])
    n = int(re.search(r"first (\d+)", q).group(1))
    return " ".join(str(2 * i) for i in range(1, n + 1))


def wrong_response(p) -> str:
    if p.dataset == "gsm8k":
        return f"The answer is {int(p.ground_truth) + 1}."
    spec = json.loads(p.ground_truth)
    if spec["func_name"] == "validate_uppercase":
        return "lower case"
    if spec["func_name"] == "verify_keyword_frequency":
        return ", ".join([spec["word"]] * (spec["N"] + 1))
    return "2, 4, 6"


def test_demo_prompts_are_verifiable():
    loaded = load_prompts(source_specs("builtin:rlvr-demo"), on_error="strict", seed=0)
    assert len(loaded.prompts) == 256 and {p.dataset for p in loaded.prompts} == {"gsm8k", "ifeval"}
    for p in loaded.prompts:
        assert verify(p.dataset, correct_response(p), p.ground_truth), p
        assert not verify(p.dataset, wrong_response(p), p.ground_truth), p
