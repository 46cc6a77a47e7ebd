"""The zigzag CP layout: every token on exactly one rank, rank r holding chunks r and 2*CP-1-r."""

import pytest
import torch

from tulu_mcore.models.context_parallel import (
    local_positions,
    split_for_cp,
    thd_zigzag_positions,
    zigzag_positions,
)


@pytest.mark.parametrize("cp", [1, 2, 4])
def test_zigzag_partitions_the_sequence(cp):
    s = 16 * cp
    parts = [zigzag_positions(s, cp, r) for r in range(cp)]
    assert torch.equal(torch.sort(torch.cat(parts)).values, torch.arange(s))
    c = s // (2 * cp)
    for r, p in enumerate(parts):
        assert p.tolist() == list(range(r * c, (r + 1) * c)) + list(range((2 * cp - 1 - r) * c, (2 * cp - r) * c))


def test_thd_zigzag_is_per_document():
    cu = torch.tensor([0, 8, 12, 20])  # documents of padded length 8, 4, 8
    r0 = thd_zigzag_positions(cu, 2, 0).tolist()
    r1 = thd_zigzag_positions(cu, 2, 1).tolist()
    assert r0 == [0, 1, 6, 7, 8, 11, 12, 13, 18, 19]
    assert r1 == [2, 3, 4, 5, 9, 10, 14, 15, 16, 17]
    with pytest.raises(ValueError, match="multiple of 2\\*CP"):
        thd_zigzag_positions(torch.tensor([0, 6]), 2, 0)


def test_split_for_cp_selects_local_tokens():
    tokens = torch.arange(16).view(1, 16)
    out = split_for_cp({"tokens": tokens, "labels": tokens + 100, "other": "kept"}, 2, 1)
    assert out["tokens"].tolist() == [[4, 5, 6, 7, 8, 9, 10, 11]]
    assert out["labels"].tolist() == [[104, 105, 106, 107, 108, 109, 110, 111]]
    assert out["other"] == "kept"
    assert torch.equal(local_positions(16, 1, 0), torch.arange(16))
