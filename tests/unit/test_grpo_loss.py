"""GRPO pieces against formulas written out here: group-normalised advantages, the clipped
policy-gradient term, kl3, and the placement of per-token values in packed rows."""

import math

import numpy as np
import pytest
import torch

from tulu_mcore.algorithms.grpo import group_advantages, grpo_token_loss
from tulu_mcore.training.rollouts import from_token, per_token
from tulu_mcore.data.packing import pack


def test_group_advantages():
    scores = np.array([[10.0, 0.0, 0.0, 10.0], [0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0]])
    adv = group_advantages(scores)
    # mean 5, unbiased std sqrt(100/3)
    a = 5 / math.sqrt(100 / 3)
    assert np.allclose(adv[0], [a, -a, -a, a])
    assert np.allclose(adv[1], 0.0)  # a group that all scored the same teaches nothing
    assert np.allclose(adv[2].sum(), 0.0) and adv[2, 0] > 0 > adv[2, 1]


def test_token_loss_and_gradient():
    logp = torch.tensor([-1.0, -2.0, -0.5, -3.0], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([-1.0, -1.5, -0.5, -3.5], dtype=torch.float64)
    ref = torch.tensor([-1.2, -2.0, -0.7, -2.5], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    loss, kl3, ratio = grpo_token_loss(logp, old, ref, adv, clip=0.2, beta=0.1)
    loss.sum().backward()
    for i in range(4):
        r = math.exp(logp[i].item() - old[i].item())
        a = adv[i].item()
        unclipped, clipped = r * a, min(max(r, 0.8), 1.2) * a
        pg = -min(unclipped, clipped)
        d = ref[i].item() - logp[i].item()
        k = math.exp(d) - d - 1
        assert abs(loss[i].item() - (pg + 0.1 * k)) < 1e-12 and abs(kl3[i].item() - k) < 1e-12
        # gradient: -A r where the unclipped term is the minimum (else 0), plus beta (1 - exp(d))
        g_pg = -a * r if unclipped <= clipped else 0.0
        assert abs(logp.grad[i].item() - (g_pg + 0.1 * (1 - math.exp(d)))) < 1e-12


def test_per_token_values_sit_where_the_response_is_predicted():
    docs = [{"ids": np.array([5, 6, 7, 8, 9]), "prompt_len": 3, "v": [0.5, 0.7]},
            {"ids": np.array([1, 2, 3]), "prompt_len": 2, "v": [0.9]}]
    examples = []
    for d in docs:
        trained = np.zeros(len(d["ids"]), np.uint8)
        trained[d["prompt_len"]:] = 1
        examples.append((d["ids"], trained))
    [row] = pack(examples, 16, multiple=4)
    arr = per_token(row, docs, "v")
    assert torch.equal(arr != 0, row.loss_mask != 0)  # exactly at the trained positions
    assert sorted(arr[arr != 0].tolist()) == pytest.approx([0.5, 0.7, 0.9])
    # and back: from_token reads each document's values from the same positions
    back = [dict(d) for d in docs]
    from_token(row, arr, back, "w")
    assert [list(d["w"]) for d in back] == [pytest.approx([0.5, 0.7]), pytest.approx([0.9])]
