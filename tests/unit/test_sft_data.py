"""SFT data: the Tülu template and label spans (written out here), bad-data handling, the tokenized cache,
best-fit packing and the per-step batches."""

import json
import shutil

import numpy as np
import pytest

from tests.conftest import open_instruct_labels
from tulu_mcore.data import cache
from tulu_mcore.data.loader import StepBatches
from tulu_mcore.data.packing import best_fit, efficiency, pack
from tulu_mcore.data.sources import TINY_TOKENIZER, load_conversations, source_specs
from tulu_mcore.data.template import ConversationError, check_messages, encode_batch, labels_of
from tulu_mcore.data.tokenizer import load_tokenizer
from tulu_mcore.errors import UserError

EOS = "<|end_of_text|>"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TINY_TOKENIZER)


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def trained_text(tok, enc):
    return tok.decode([int(i) for i, t in zip(enc.input_ids, enc.trained) if t])


# ----------------------------------------------------------------------------- template and labels
def test_single_turn(tok):
    msgs = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."}]
    enc = encode_batch([msgs], tok, 512)[0]
    assert enc.text == f"<|user|>\nWhat is 2 + 3?\n<|assistant|>\n2 + 3 = 5.{EOS}"  # no BOS, no final newline
    prompt = ids(tok, "<|user|>\nWhat is 2 + 3?\n<|assistant|>\n")
    answer = ids(tok, "2 + 3 = 5.") + [tok.eos_token_id]
    assert enc.input_ids.tolist() == prompt + answer
    assert labels_of(enc) == [-100] * len(prompt) + answer


def test_multi_turn_with_system(tok):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6"},
    ]
    enc = encode_batch([msgs], tok, 512)[0]
    assert enc.text == (f"<|system|>\nBe brief.\n<|user|>\n2+2?\n<|assistant|>\n4{EOS}\n"
                        f"<|user|>\nAnd 3+3?\n<|assistant|>\n6{EOS}")
    # spans written out: each assistant content and its EOS; the newline after the first EOS, the system
    # and user turns and the <|assistant|> prefixes are not trained
    pieces = [("<|system|>\nBe brief.\n<|user|>\n2+2?\n<|assistant|>\n", False), ("4", True), (EOS, True),
              ("\n<|user|>\nAnd 3+3?\n<|assistant|>\n", False), ("6", True), (EOS, True)]
    expected_ids, expected_labels = [], []
    for text, trained in pieces:
        piece = [tok.eos_token_id] if text == EOS else ids(tok, text)
        expected_ids += piece
        expected_labels += piece if trained else [-100] * len(piece)
    assert enc.input_ids.tolist() == expected_ids
    assert labels_of(enc) == expected_labels
    assert trained_text(tok, enc) == f"4{EOS}6{EOS}"


def test_truncation_cuts_ids_and_labels_together(tok):
    msgs = [{"role": "user", "content": "Spell the word 'garden' backwards."},
            {"role": "assistant", "content": "nedrag"}]
    full = encode_batch([msgs], tok, 512)[0]
    cut = encode_batch([msgs], tok, len(full.input_ids) - 2)[0]
    assert cut.truncated and not full.truncated
    assert cut.input_ids.tolist() == full.input_ids[:-2].tolist()
    assert labels_of(cut) == labels_of(full)[:-2]


def test_offsets_agree_with_prefix_retokenization_on_all_demo_data(tok):
    convs = load_conversations(source_specs("builtin:sft-demo"), on_error="strict", seed=0).conversations
    for msgs, enc in zip(convs, encode_batch(convs, tok, 4096)):
        full, labels = open_instruct_labels(tok, msgs)
        assert enc.input_ids.tolist() == full
        assert labels_of(enc) == labels


@pytest.mark.parametrize(
    "msgs,reason",
    [
        ([], "empty messages"),
        ([{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}], "unknown role"),
        ([{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}], "turns out of order"),
        ([{"role": "assistant", "content": "x"}], "turns out of order"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}], "turns out of order"),
        ([{"role": "user", "content": "only a question"}], "no assistant turn"),
        ([{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}], "malformed message"),
        ([{"role": "user"}], "malformed message"),
    ],
)
def test_bad_conversations(msgs, reason):
    with pytest.raises(ConversationError) as e:
        check_messages(msgs)
    assert e.value.reason == reason


# ----------------------------------------------------------------------------- sources
def _jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


GOOD = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})


def test_strict_names_file_and_line(tmp_path):
    f = _jsonl(tmp_path / "d.jsonl", [GOOD, "{not json", GOOD])
    with pytest.raises(UserError, match=rf"{f}:2: not valid JSON .*data.on_error=skip"):
        load_conversations(source_specs(str(f)), on_error="strict", seed=0)
    g = _jsonl(tmp_path / "e.jsonl", [GOOD, GOOD, json.dumps({"messages": [{"role": "robot", "content": "x"}]})])
    with pytest.raises(UserError, match=rf"{g}:3: message 0 has unknown role 'robot'"):
        load_conversations(source_specs(str(g)), on_error="strict", seed=0)


def test_skip_counts_each_reason(tmp_path):
    bad_order = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})
    f = _jsonl(tmp_path / "d.jsonl", [GOOD, "{not json", json.dumps({"messages": []}), bad_order,
                                      json.dumps({"text": "no messages"}), GOOD])
    r = load_conversations(source_specs(str(f)), on_error="skip", seed=0)
    assert len(r.conversations) == 2 and r.examples_seen == 6
    assert dict(r.skipped) == {"invalid JSON": 1, "empty messages": 1, "turns out of order": 1,
                               "no messages field": 1}


def test_json_parquet_and_capped_mixture(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(GOOD) for _ in range(5)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "b.parquet")
    r = load_conversations(source_specs([str(tmp_path / "a.json"),
                                         {"path": str(tmp_path / "b.parquet"), "max_examples": 2}]),
                           on_error="strict", seed=0)
    assert len(r.conversations) == 7
    assert r.origins[0] == f"{tmp_path / 'a.json'}[#0]" and r.origins[-1].startswith(f"{tmp_path / 'b.parquet'}[#")
    with pytest.raises(UserError, match="unknown data format '.txt'"):
        load_conversations(source_specs(str(_jsonl(tmp_path / "c.txt", [GOOD]))), on_error="strict", seed=0)
    with pytest.raises(UserError, match="unknown key"):
        source_specs([{"path": "x", "cap": 3}])


# ----------------------------------------------------------------------------- cache
def _prepare(specs, tok, tmp_path, **kw):
    opts = dict(max_seq_len=256, truncate=True, on_error="strict", seed=0)
    opts.update(kw)
    return cache.prepare(specs, tok, cache_dir=tmp_path / "cache", log=lambda m: None, **opts)


def test_cache_builds_once_and_keys_on_inputs(tok, tmp_path):
    specs = source_specs("builtin:sft-demo")
    a = _prepare(specs, tok, tmp_path)
    assert len(a) == 600 and a.meta["skipped"] == {}
    b = _prepare(specs, tok, tmp_path)  # reused: same directory
    assert b.path == a.path and np.array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    c = _prepare(specs, tok, tmp_path, max_seq_len=128)
    assert c.path != a.path
    # the arrays hold exactly what the template gives
    convs = load_conversations(specs, on_error="strict", seed=0).conversations
    enc = encode_batch(convs[:3], tok, 256)
    for i, e in enumerate(enc):
        got_ids, got_trained = a.example(i)
        assert got_ids.tolist() == e.input_ids.tolist() and got_trained.tolist() == e.trained.tolist()


def test_too_long_and_untrained_examples(tok, tmp_path):
    long_answer = json.dumps({"messages": [{"role": "user", "content": "count"},
                                           {"role": "assistant", "content": " ".join(["river"] * 60)}]})
    long_prompt = json.dumps({"messages": [{"role": "user", "content": " ".join(["cloud"] * 60)},
                                           {"role": "assistant", "content": "ok"}]})
    f = _jsonl(tmp_path / "d.jsonl", [GOOD, long_answer, long_prompt])
    specs = source_specs(str(f))
    with pytest.raises(UserError, match=rf"{f}:2: longer than data.max_seq_len=32 tokens"):
        _prepare(specs, tok, tmp_path, max_seq_len=32, truncate=False)
    skipped = _prepare(specs, tok, tmp_path, max_seq_len=32, truncate=False, on_error="skip")
    assert len(skipped) == 1 and skipped.meta["skipped"] == {"longer than max_seq_len": 2}
    # Tülu truncates: the long answer keeps its first tokens; the long prompt loses its answer: dropped
    cut = _prepare(specs, tok, tmp_path, max_seq_len=32, truncate=True)
    assert len(cut) == 2 and cut.meta["truncated"] == 1
    assert cut.meta["skipped"] == {"no trained token left after truncation": 1}


# ----------------------------------------------------------------------------- packing and batches
def test_best_fit_places_everything_within_capacity():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=200).tolist()
    bins = best_fit(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(200))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    assert sum(lengths) / (128 * len(bins)) > 0.97  # long-tailed mixes pack tightly
    assert bins == best_fit(lengths, 128)  # deterministic


def test_pack_rows_labels_and_boundaries():
    a = (np.array([10, 11, 12, 13]), np.array([0, 0, 1, 1], dtype=bool))
    b = (np.array([20, 21, 22]), np.array([0, 1, 1], dtype=bool))
    rows = pack([a, b], 12, multiple=4, pad_id=0, trim=False)
    assert len(rows) == 1
    r = rows[0]
    # the longer document first; each padded to a multiple of 4; the tail padding belongs to the last
    assert r.cu_seqlens.tolist() == [0, 4, 7] and r.cu_seqlens_padded.tolist() == [0, 4, 12]
    assert r.tokens[0].tolist() == [10, 11, 12, 13, 20, 21, 22, 0, 0, 0, 0, 0]
    # the loss at j predicts token j+1 of the same document, weighted by whether that token is trained
    assert r.labels[0, :3].tolist() == [11, 12, 13] and r.labels[0, 4:6].tolist() == [21, 22]
    assert r.loss_mask[0].tolist() == [0, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0]
    assert (r.num_seqs, r.real_tokens, r.seq_lens) == (2, 7, [4, 3])
    assert efficiency(rows) == pytest.approx(7 / 12)
    # trimmed (the default): the row ends where its last document's padding to the multiple ends
    [t] = pack([a, b], 12, multiple=4, pad_id=0)
    assert t.tokens.shape == (1, 8) and t.cu_seqlens_padded.tolist() == [0, 4, 8]
    padded = pack([a, b], 8, multiple=1, pad_id=0, rows_multiple=4)
    assert len(padded) == 4 and padded[-1].num_seqs == 0 and padded[-1].loss_mask.sum() == 0
    assert [r.tokens.shape[1] for r in padded] == [7, 1, 1, 1]


def test_step_batches_are_a_function_of_the_step(tok, tmp_path):
    data = _prepare(source_specs("builtin:sft-demo"), tok, tmp_path)
    sb = StepBatches(data, global_batch=32, seed=5)
    assert sb.steps_per_epoch == 600 // 32
    first = sb.global_indices(3).tolist()
    assert StepBatches(data, global_batch=32, seed=5).global_indices(3).tolist() == first
    epoch0 = np.concatenate([sb.global_indices(s) for s in range(18)])
    assert len(set(epoch0.tolist())) == 18 * 32  # an epoch visits each example at most once
    assert sb.global_indices(18).tolist() != sb.global_indices(0).tolist()  # reshuffled next epoch
    # data-parallel ranks split the step's conversations between them
    kw = dict(capacity=256, multiple=1, pad_id=1)
    seqs = [sum(r.num_seqs for r in sb.rows(3, dp_rank=k, dp_size=2, **kw)) for k in range(2)]
    assert seqs == [16, 16]
    with pytest.raises(UserError, match="fewer than one global batch"):
        StepBatches(data, global_batch=1000, seed=0)


def test_inspect_cli(tmp_path):
    from tests.conftest import run_cli

    proc = run_cli("tulu_mcore.cli.data", "inspect", "--tokenizer", TINY_TOKENIZER, "--data", "builtin:sft-demo",
                   "--limit", "3")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 3
    for r in rows:
        assert r["text"].startswith("<|") and len(r["input_ids"]) == len(r["labels"])
        assert all(lab in (-100, i) for lab, i in zip(r["labels"], r["input_ids"]))
        assert r["labels"][-1] == 1  # the final EOS is trained
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    proc = run_cli("tulu_mcore.cli.data", "inspect", "--tokenizer", TINY_TOKENIZER, "--data", bad)
    assert proc.returncode == 2 and f"{bad}:1: not valid JSON" in proc.stderr and "Traceback" not in proc.stderr
    shutil.rmtree(tmp_path)
