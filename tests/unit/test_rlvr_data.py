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
        assert x[0] != tok.bos_token_id and tok.decode(x.tolist()) == prompt_text(p.messages, tok.eos_token)
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
    if spec["func_name"] == "validate_end":  # a response format asked for: any content, that ending
        return f"Some answer. {spec['end_phrase']}"
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
    if spec["func_name"] == "validate_end":
        return f"{spec['end_phrase']} Some answer."
    return "2, 4, 6"


def test_demo_prompts_are_verifiable():
    loaded = load_prompts(source_specs("builtin:rlvr-demo"), on_error="strict", seed=0)
    assert len(loaded.prompts) == 320 and {p.dataset for p in loaded.prompts} == {"gsm8k", "ifeval"}
    for p in loaded.prompts:
        assert verify(p.dataset, correct_response(p), p.ground_truth), p
        assert not verify(p.dataset, wrong_response(p), p.ground_truth), p


def test_prompts_over_the_release_limit_are_filtered_and_counted(tmp_path):
    """As Tülu's dataset filter (--max_prompt_token_length): longer prompts are dropped, not an error."""
    from tulu_mcore.algorithms.rlvr.prompts import load_rlvr_data
    from tulu_mcore.config.compose import compose

    tok = load_tokenizer(TINY_TOKENIZER)
    rows = [{"messages": [{"role": "user", "content": f"{i} + 1?" + " and more" * (40 * (i % 2))}],
             "ground_truth": str(i + 1), "dataset": "gsm8k"} for i in range(8)]
    path = write(tmp_path / "p.jsonl", rows)
    lengths = [len(x) for x in encode_prompts(load_prompts(source_specs(path), on_error="strict", seed=0).prompts, tok)]
    limit = max(lengths[0::2])
    assert min(lengths[1::2]) > limit  # the odd rows are the long ones
    logs = []
    cfg = compose(["recipe=rlvr_grpo", f"data.train={path}", f"rlvr.max_prompt_tokens={limit}",
                   "train.global_batch_size=2", "train.seq_length=4096"])
    data = load_rlvr_data(cfg, tok, logs.append, 1)
    assert sorted(p.ground_truth for p in data.prompts) == ["1", "3", "5", "7"] and data.steps_per_epoch == 2
    assert any(f"4 prompts longer than rlvr.max_prompt_tokens={limit} filtered out" in m for m in logs), logs
    # without the limit a prompt that cannot fit the row is an error naming the fix
    cfg = compose(["recipe=rlvr_grpo", f"data.train={path}", "train.global_batch_size=2",
                   f"train.seq_length={limit + 64}", "rlvr.max_new_tokens=32"])
    with pytest.raises(UserError, match="raise train.seq_length"):
        load_rlvr_data(cfg, tok, logs.append, 1)


def test_group_token_mean_needs_whole_groups_per_rank(tmp_path):
    from tulu_mcore.algorithms.rlvr.prompts import load_rlvr_data
    from tulu_mcore.config.compose import compose

    cfg = compose(["recipe=rlvr_grpo", "train.global_batch_size=6", "rlvr.samples_per_prompt=3",
                   "rlvr.loss_aggregation=group_token_mean", "rlvr.loss_group_size=4"])
    with pytest.raises(UserError, match="groups of rlvr.loss_group_size=4"):
        load_rlvr_data(cfg, load_tokenizer(TINY_TOKENIZER), print, 2)  # 3 prompts x 3 samples per rank
