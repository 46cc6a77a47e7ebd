"""GRPO pieces against formulas written out here: group-normalised advantages, the clipped
policy-gradient term, kl3, and the placement of per-token values in packed rows."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tulu_mcore.algorithms.rlvr.batch import RolloutBatch, Trajectory, loss_weights
from tulu_mcore.algorithms.rlvr.grpo import group_advantages, grpo_token_loss


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


@pytest.mark.parametrize("gap", [45.0, -45.0])
def test_kl3_clamps_the_log_ratio_at_40_as_released(gap):
    """Tülu 3.1: d = clamp(logp - ref, -40, 40), kl3 = expm1(-d) + d; outside the clamp the KL term has no
    gradient. Unclamped, a gap of ~89 makes exp overflow in fp32."""
    logp = torch.tensor([-1.0], dtype=torch.float32, requires_grad=True)
    ref = logp.detach() - gap
    loss, kl3, _ = grpo_token_loss(logp, logp.detach(), ref, torch.zeros(1), clip=0.2, beta=0.01)
    d = 40.0 if gap > 0 else -40.0
    assert torch.isfinite(kl3).all() and kl3.item() == pytest.approx(math.expm1(-d) + d, rel=1e-6)
    loss.sum().backward()
    assert logp.grad.item() == 0.0
    far, kl_far, _ = grpo_token_loss(logp.detach(), logp.detach(), logp.detach() + 89.0, torch.zeros(1), clip=0.2,
                                     beta=0.01)
    assert torch.isfinite(far).all() and torch.isfinite(kl_far).all()


def test_group_token_mean_worked_example():
    """The release's arithmetic: one rank, micro-batches (groups) of K=2 sequences; A = two 1-token
    responses with loss 1 per token, B = two 3-token responses with loss 0. The loss is the mean of the
    micro-batches' token means (1 + 0) / 2 = 0.5; each token's weight 1/(2 x 2) in A, 1/(2 x 6) in B.
    token_mean: 2 / 8 = 0.25, weight 1/8 everywhere."""
    lengths = [1, 1, 3, 3]
    losses = [np.ones(1), np.ones(1), np.zeros(3), np.zeros(3)]
    n = sum(lengths)  # megatron divides sum(w * loss) by the step's tokens
    for rule, k, groups, want_loss, want in [("group_token_mean", 2, 2, 0.5, [0.25, 0.25, 1 / 12, 1 / 12]),
                                             ("token_mean", 2, 0, 0.25, [1 / 8] * 4),
                                             ("sequence_mean", 2, 4, 0.5, [0.25, 0.25, 1 / 12, 1 / 12])]:
        w = loss_weights(lengths, rule, k, n, groups)
        assert sum(float((wi * li).sum()) for wi, li in zip(w, losses)) / n == pytest.approx(want_loss)
        assert [wi[0] / n for wi in w] == pytest.approx(want)
    # sequence_mean: each sequence's token mean, then their mean
    w = loss_weights([1, 3], "sequence_mean", 1, 4, 2)
    assert (w[0] * 2.0).sum() / 4 + (w[1] * np.array([1.0, 2.0, 3.0])).sum() / 4 == pytest.approx((2.0 + 2.0) / 2)


def test_group_weights_do_not_depend_on_how_ranks_split_the_sequences():
    lengths = [2, 5, 1, 4, 3, 3, 7, 1]
    one = loss_weights(lengths, "group_token_mean", 2, sum(lengths), 4)
    two = (loss_weights(lengths[:4], "group_token_mean", 2, sum(lengths), 4)
           + loss_weights(lengths[4:], "group_token_mean", 2, sum(lengths), 4))
    assert all(np.array_equal(a, b) for a, b in zip(one, two))


def _trajectory(ids, prompt_len, score=0.0):
    n = len(ids) - prompt_len
    return Trajectory(ids=np.array(ids), prompt_len=prompt_len, engine_logps=np.full(n, -1.0), finished=True,
                      weight_version=0, dataset="gsm8k", verified=score > 0, score=score)


def test_per_token_values_sit_where_the_response_is_predicted():
    batch = RolloutBatch([_trajectory([5, 6, 7, 8, 9], 3), _trajectory([1, 2, 3], 2)], samples_per_prompt=2)
    batch.trajectories[0].advantages, batch.trajectories[1].advantages = np.array([0.5, 0.7]), np.array([0.9])
    run = SimpleNamespace(cfg=SimpleNamespace(train=SimpleNamespace(seq_length=16)), multiple=4, pad_id=0,
                          trim_rows=True)
    [row] = batch.pack(run)
    assert row.cu_seqlens_padded.tolist() == [0, 8, 12]  # each document padded to a multiple of 4
    arr = batch.per_token(row, "advantages")
    assert torch.equal(arr != 0, row.loss_mask != 0)  # exactly at the trained positions
    assert arr[0, 2:4].tolist() == pytest.approx([0.5, 0.7]) and arr[0, 9].item() == pytest.approx(0.9)
    # and back: from_token reads each trajectory's values from the same positions
    batch.from_token(row, arr, "returns")
    assert [list(t.returns) for t in batch.trajectories] == [pytest.approx([0.5, 0.7]), pytest.approx([0.9])]


def test_batch_groups_split_by_prompt_and_take_group_advantages():
    scores = [10.0, 0.0, 0.0, 10.0, 10.0, 10.0]  # three prompts, two samples each
    batch = RolloutBatch([_trajectory([1, 2, 3 + i, 4, 5][: 3 + i % 3], 2, s) for i, s in enumerate(scores)],
                         samples_per_prompt=2)
    assert batch.scores.tolist() == [[10.0, 0.0], [0.0, 10.0], [10.0, 10.0]]
    batch.set_advantages(group_advantages(batch.scores))
    a = 5 / math.sqrt(50)
    for t, want in zip(batch.trajectories, [a, -a, -a, a, 0.0, 0.0]):
        assert len(t.advantages) == t.response_len and np.allclose(t.advantages, want)
    parts = batch.split(2)  # by prompts: [prompts 0, 1] and [prompt 2]
    assert [len(p.trajectories) for p in parts] == [4, 2]
    assert parts[1].trajectories[0] is batch.trajectories[4]
