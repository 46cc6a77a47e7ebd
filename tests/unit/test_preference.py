"""Preference tuning pieces: each loss and its gradient against formulas written out here, the pair
formats and bad pairs, pair packing, and the reference cache's staleness check."""

import json
import math

import numpy as np
import pytest
import torch

from tulu_mcore.algorithms.dpo import implicit_rewards, preference_loss
from tulu_mcore.algorithms.rm import bradley_terry_loss
from tulu_mcore.data import cache
from tulu_mcore.data.loader import StepBatches
from tulu_mcore.data.packing import pack
from tulu_mcore.data.preference import load_pairs
from tulu_mcore.data.sources import TINY_TOKENIZER, source_specs
from tulu_mcore.data.tokenizer import load_tokenizer
from tulu_mcore.errors import UserError
from tulu_mcore.training.reference import ReferenceCache

# a few pairs: policy / reference log-prob sums and trained-token counts (chosen, rejected)
PC = [-12.0, -30.5, -7.25, -50.0]
PR = [-15.5, -28.0, -9.0, -41.0]
RC = [-13.0, -29.0, -7.0, -52.5]
RR = [-14.0, -29.5, -10.0, -40.0]
LC = [6.0, 15.0, 4.0, 20.0]
LR = [7.0, 13.0, 5.0, 18.0]


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def expected(loss_type, i, beta, eps=0.0, gamma=0.0):
    """(loss, d loss / d policy_chosen, d loss / d policy_rejected) of pair i, by hand."""
    pc, pr, rc, rr, lc, lr = PC[i], PR[i], RC[i], RR[i], LC[i], LR[i]
    if loss_type == "dpo":
        h, dc, dr = (pc - rc) - (pr - rr), 1.0, -1.0
    elif loss_type in ("dpo_norm", "ipo"):
        h, dc, dr = (pc / lc - rc / lc) - (pr / lr - rr / lr), 1.0 / lc, -1.0 / lr
    if loss_type == "ipo":
        t = h - 1.0 / (2 * beta)
        return t * t, 2 * t * dc, 2 * t * dr
    if loss_type == "simpo":
        z = beta * (pc / lc - pr / lr) - gamma
        dz_c, dz_r = beta / lc, -beta / lr
    else:
        z, dz_c, dz_r = beta * h, beta * dc, beta * dr
    # -(1-eps) log s(z) - eps log s(-z);  d/dz = s(z) - 1 + eps
    loss = -(1 - eps) * math.log(sig(z)) - eps * math.log(sig(-z))
    g = sig(z) - 1 + eps
    return loss, g * dz_c, g * dz_r


@pytest.mark.parametrize("loss_type,beta,eps,gamma", [
    ("dpo", 0.1, 0.0, 0.0), ("dpo", 0.5, 0.1, 0.0), ("dpo_norm", 5.0, 0.0, 0.0), ("ipo", 0.3, 0.0, 0.0),
    ("simpo", 2.0, 0.0, 0.5), ("simpo", 2.5, 0.05, 1.4),
])
def test_loss_and_gradient_match_formulas(loss_type, beta, eps, gamma):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    pc, pr = t(PC).requires_grad_(), t(PR).requires_grad_()
    ref_c, ref_r = (None, None) if loss_type == "simpo" else (t(RC), t(RR))
    losses = preference_loss(pc, pr, ref_c, ref_r, t(LC), t(LR), loss_type=loss_type, beta=beta,
                             label_smoothing=eps, gamma=gamma)
    losses.sum().backward()
    for i in range(len(PC)):
        loss, g_c, g_r = expected(loss_type, i, beta, eps, gamma)
        assert abs(losses[i].item() - loss) <= 1e-6 * max(1.0, abs(loss)), (i, losses[i].item(), loss)
        assert abs(pc.grad[i].item() - g_c) <= 1e-6 and abs(pr.grad[i].item() - g_r) <= 1e-6, i


def test_rewards_and_bradley_terry():
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    cr, rj = implicit_rewards(t(PC), t(PR), t(RC), t(RR), t(LC), t(LR), loss_type="dpo_norm", beta=5.0)
    assert cr[0].item() == pytest.approx(5.0 * (PC[0] - RC[0]) / LC[0])
    assert rj[3].item() == pytest.approx(5.0 * (PR[3] - RR[3]) / LR[3])
    cr, rj = implicit_rewards(t(PC), t(PR), t(RC), t(RR), t(LC), t(LR), loss_type="dpo", beta=0.1)
    assert cr[1].item() == pytest.approx(0.1 * (PC[1] - RC[1]))
    bt = bradley_terry_loss(t([2.0, -1.0]), t([0.5, 3.0]))
    assert bt.tolist() == pytest.approx([math.log1p(math.exp(-1.5)), math.log1p(math.exp(4.0))], abs=1e-12)


def test_policy_equal_to_reference_gives_log2():
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    for lt in ("dpo", "dpo_norm"):
        losses = preference_loss(t(PC), t(PR), t(PC), t(PR), t(LC), t(LR), loss_type=lt, beta=5.0)
        assert torch.allclose(losses, torch.full_like(losses, math.log(2)))


# ----------------------------------------------------------------------------- pair data
PROMPT = [{"role": "user", "content": "What is 2 + 3?"}]
GOOD = {"role": "assistant", "content": "2 + 3 = 5."}
BAD = {"role": "assistant", "content": "2 + 3 = 6."}


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_both_formats_give_the_same_pair(tmp_path):
    a = write(tmp_path / "a.jsonl", [{"chosen": PROMPT + [GOOD], "rejected": PROMPT + [BAD]}])
    b = write(tmp_path / "b.jsonl", [{"prompt": PROMPT[0]["content"], "chosen": GOOD["content"],
                                      "rejected": BAD["content"]}])
    pa, pb = (load_pairs(source_specs(p), on_error="strict", seed=0) for p in (a, b))
    assert pa.pairs == pb.pairs == [(PROMPT + [GOOD], PROMPT + [BAD])]
    assert pa.origins == [f"{a}:1"]


BAD_ROWS = [
    {"chosen": PROMPT + [GOOD], "rejected": PROMPT + [GOOD]},  # identical
    {"chosen": PROMPT + [GOOD]},  # missing rejected
    {"chosen": PROMPT + [GOOD], "rejected": [{"role": "user", "content": "Other?"}, BAD]},  # other prompt
]


def test_bad_pairs_counted_or_refused(tmp_path):
    rows = [{"chosen": PROMPT + [GOOD], "rejected": PROMPT + [BAD]}] + BAD_ROWS
    path = write(tmp_path / "p.jsonl", rows)
    got = load_pairs(source_specs(path), on_error="skip", seed=0)
    assert len(got.pairs) == 1
    assert dict(got.skipped) == {"identical chosen and rejected": 1, "missing field": 1, "different prompts": 1}
    with pytest.raises(UserError, match=rf"{path}:2: .*identical.*data.on_error=skip"):
        load_pairs(source_specs(path), on_error="strict", seed=0)


def test_pair_cache_drops_untrained_and_describes(tmp_path):
    tok = load_tokenizer(TINY_TOKENIZER)
    long = {"role": "assistant", "content": "word " * 200}
    rows = [{"chosen": PROMPT + [GOOD], "rejected": PROMPT + [BAD]},
            {"chosen": [{"role": "user", "content": "x " * 300}, GOOD], "rejected": [{"role": "user", "content": "x " * 300}, long]}]
    path = write(tmp_path / "p.jsonl", rows)
    data = cache.prepare(source_specs(path), tok, cache_dir=tmp_path / "c", max_seq_len=64, truncate=True,
                         on_error="strict", seed=0, kind="pairs", log=lambda m: None)
    assert data.units == 1 and len(data) == 2 and data.group_size == 2
    assert data.meta["skipped"] == {"no trained token left after truncation": 1}
    assert "1 pairs" in cache.describe(data.meta)


# ----------------------------------------------------------------------------- packing pairs
def test_pairs_stay_together_in_row_order():
    rng = np.random.default_rng(0)
    examples, lengths = [], []
    for _ in range(10):
        for _side in range(2):
            n = int(rng.integers(5, 40))
            trained = np.zeros(n, np.uint8)
            trained[n // 2:] = 1
            examples.append((rng.integers(2, 500, n), trained))
            lengths.append(n)
    rows = pack(examples, 96, multiple=4, group_size=2, ids=list(range(100, 110)))
    seen = []
    for row in rows:
        assert row.num_seqs == 2 * len(row.units)
        for k, u in enumerate(row.units):
            i = u - 100
            for side in range(2):
                d = 2 * k + side
                start = int(row.cu_seqlens_padded[d])
                n = lengths[2 * i + side]
                assert row.seq_lens[d] == n
                assert torch.equal(row.tokens[0, start:start + n], torch.as_tensor(examples[2 * i + side][0]))
                assert (row.doc_ids[0, start:start + n] == d).all()
                assert row.last_token[0, start + n - 1] == 1  # the last trained token of each sequence
            seen.append(u)
        assert row.last_token.sum() == row.num_seqs
    assert sorted(seen) == list(range(100, 110))


def test_step_batches_count_pairs(tmp_path):
    tok = load_tokenizer(TINY_TOKENIZER)
    data = cache.prepare(source_specs("builtin:preference-demo"), tok, cache_dir=tmp_path, max_seq_len=128,
                         truncate=True, on_error="strict", seed=0, kind="pairs", log=lambda m: None)
    b = StepBatches(data, global_batch=32, seed=1)
    assert b.steps_per_epoch == data.units // 32
    rows = b.rows(0, dp_rank=0, dp_size=2, capacity=256, multiple=1, pad_id=1)
    assert sum(len(r.units) for r in rows) == 16
    with pytest.raises(UserError, match="2 x data.max_seq_len"):
        b.rows(0, dp_rank=0, dp_size=1, capacity=64, multiple=1, pad_id=1)


# ----------------------------------------------------------------------------- reference cache key
def test_stale_cache_is_refused(tmp_path):
    parts = {"format": 1, "data": "abc", "reference": {"weights": "/m", "dtype": "float32"}}
    d = tmp_path / "ref"
    assert ReferenceCache.locate(str(d), tmp_path, parts) == d  # absent: to be built there
    d.mkdir()
    (d / "meta.json").write_text(json.dumps({"key": ReferenceCache.key_of(parts), "parts": parts}))
    assert ReferenceCache.locate(str(d), tmp_path, parts) == d  # the same inputs: reused
    other = {**parts, "reference": {"weights": "/m", "dtype": "bfloat16"}}
    with pytest.raises(UserError, match="stale.*reference differs"):
        ReferenceCache.locate(str(d), tmp_path, other)
    with pytest.raises(UserError, match="stale.*data differs"):
        ReferenceCache.locate(str(d), tmp_path, {**parts, "data": "xyz"})
    default = ReferenceCache.locate(None, tmp_path, other)
    assert default.parent == tmp_path and default.name == f"reference-{ReferenceCache.key_of(other)}"


def test_data_inspect_shows_pairs(tmp_path):
    from tests.conftest import run_cli

    path = write(tmp_path / "p.jsonl", [{"chosen": PROMPT + [GOOD], "rejected": PROMPT + [BAD]}, BAD_ROWS[0]])
    proc = run_cli("tulu_mcore.cli.data", "inspect", "--tokenizer", TINY_TOKENIZER, "--data", path, "--pairs",
                   "--on-error", "skip")
    assert proc.returncode == 0, proc.stderr
    [line] = proc.stdout.splitlines()
    rec = json.loads(line)
    assert rec["origin"] == f"{path}:1" and "identical chosen and rejected" in proc.stderr
    tok = load_tokenizer(TINY_TOKENIZER)
    for side, answer in (("chosen", GOOD), ("rejected", BAD)):
        enc = rec[side]
        trained = [i for i, lab in zip(enc["input_ids"], enc["labels"]) if lab != -100]
        assert tok.decode(trained) == answer["content"] + "<|end_of_text|>"
