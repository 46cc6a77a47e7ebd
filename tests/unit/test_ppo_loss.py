"""PPO pieces against formulas written out here and the released Tülu 3 code's arithmetic: kl1-shaped
rewards with the score after EOS (the release's padding_mask_p1 layout) or on it, GAE (as the discounted
sum of TD errors), the clipped surrogate and the clipped value loss, and the release's whitening."""

import numpy as np
import pytest
import torch

from tulu_mcore.algorithms.rlvr.ppo import (
    gae,
    policy_loss,
    shaped_rewards,
    value_loss,
    value_positions,
    whitening,
)
from tulu_mcore.config.schema import RlvrConfig


def test_shaped_rewards_put_the_score_on_the_last_token():
    logp, ref = np.array([-1.0, -2.0, -0.5]), np.array([-1.5, -2.0, -0.25])
    r = shaped_rewards(10.0, logp, ref, beta=0.05)
    assert r == pytest.approx([-0.05 * 0.5, 0.0, -0.05 * -0.25 + 10.0])
    r = shaped_rewards(10.0, logp, ref, beta=0.05, positions=4)  # one position after EOS holds the score
    assert r == pytest.approx([-0.05 * 0.5, 0.0, -0.05 * -0.25, 10.0])


def test_value_positions_follow_the_release_p1_mask():
    assert value_positions(3, 8, "after_eos") == 4  # EOS at index 2: values at 0..3 (idx <= seq_len + 1)
    assert value_positions(8, 8, "after_eos") == 8  # filled the response length: no room after it
    assert value_positions(3, 8, "eos") == 3


def test_release_layout_worked_example():
    """Response a, b, EOS; logp [-1, -2, -0.5], ref [-1.2, -1.5, -0.5]; V [1, 2, 3] and V after EOS 4;
    S = 10, beta 0.05, gamma 1, lambda 0.95. The release (ppo_vllm_thread_ray_gtrl.py): rewards
    -beta kl1 with S added at sequence_length + 1, GAE over the response length, returns = A + V,
    advantages whitened over the response tokens with masked_whiten (unbiased var, rsqrt(var + 1e-8))."""
    logp, ref = np.array([-1.0, -2.0, -0.5]), np.array([-1.2, -1.5, -0.5])
    values = np.array([1.0, 2.0, 3.0, 4.0])
    # the release's numbers, by hand: rewards [-0.01, 0.025, 0, 10]; deltas [0.99, 1.025, 1, 6]
    r = shaped_rewards(10.0, logp, ref, beta=0.05, positions=value_positions(3, 2048, "after_eos"))
    adv, ret = gae(r, values, 1.0, 0.95)
    assert adv[:3] == pytest.approx([8.0105, 7.39, 6.70], abs=1e-9)
    assert ret == pytest.approx([9.0105, 9.39, 9.70, 10.0], abs=1e-9)  # the value's target after EOS: S
    mean, scale = whitening(adv[:3].sum(), (adv[:3] ** 2).sum(), 3)
    assert (adv[:3] - mean) * scale == pytest.approx([0.98186, 0.03534, -1.01720], abs=1e-4)
    # our former layout (rlvr.score_position=eos): S on EOS, V = 0 after it
    adv_eos, _ = gae(shaped_rewards(10.0, logp, ref, beta=0.05), values[:3], 1.0, 0.95)
    assert adv_eos == pytest.approx([8.28125, 7.675, 7.0], abs=1e-9)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (1.0, 0.0)])
def test_gae_is_the_discounted_sum_of_td_errors(gamma, lam):
    rng = np.random.default_rng(0)
    rewards, values = rng.normal(size=7), rng.normal(size=7)
    adv, ret = gae(rewards, values, gamma, lam)
    v_next = np.append(values[1:], 0.0)  # no value after the last token
    delta = rewards + gamma * v_next - values
    expected = [sum((gamma * lam) ** k * delta[t + k] for k in range(7 - t)) for t in range(7)]
    assert adv == pytest.approx(expected)
    assert ret == pytest.approx(adv + values)
    if gamma == 1.0 and lam == 1.0:  # Monte-Carlo: returns are the rewards to go
        assert ret == pytest.approx(np.cumsum(rewards[::-1])[::-1])


def _batch(**tensors):
    return {k: torch.tensor([v], dtype=torch.float64) for k, v in tensors.items()}


def test_policy_loss_clips_the_ratio():
    logp = torch.tensor([[-1.0, -0.5, -2.0, 0.0]], dtype=torch.float64, requires_grad=True)
    old = [-1.0, -1.0, -1.0, 0.0]
    adv = [1.0, 1.0, -1.0, 5.0]
    batch = _batch(loss_mask=[1, 1, 1, 0], old_logps=old, advantages=adv, loss_weights=[1, 1, 1, 1])
    total, n, report = policy_loss(batch, 0.2, -logp)
    ratio = np.exp(np.array([-1.0, -0.5, -2.0]) - np.array(old[:3]))
    expected = [-min(r * a, np.clip(r, 0.8, 1.2) * a) for r, a in zip(ratio, adv[:3])]
    assert total.item() == pytest.approx(sum(expected)) and int(n) == 3
    total.backward()
    # token 1: ratio e^0.5 > 1.2 with A > 0 -> clipped, no gradient; token 2: ratio e^-1 < 0.8 with A < 0 -> clipped
    assert logp.grad[0].tolist() == pytest.approx([-1.0, 0.0, 0.0, 0.0])
    assert report["ppo"][2].item() == 2  # clipped tokens


def test_value_loss_is_half_the_larger_squared_error_times_vf_coef():
    opts = RlvrConfig(vf_coef=0.1, value_clip=0.2)
    v = torch.tensor([[[1.0], [0.5], [2.0]]], dtype=torch.float64, requires_grad=True)
    w = [0.5, 2.0, 1.5]  # loss weights (rlvr.loss_aggregation)
    batch = _batch(value_mask=[1, 1, 1], old_values=[0.5, 0.5, 1.0], returns=[1.2, 0.0, 1.1], value_weights=w)
    total, n, _ = value_loss(batch, opts, v)
    vv, old, ret = np.array([1.0, 0.5, 2.0]), np.array([0.5, 0.5, 1.0]), np.array([1.2, 0.0, 1.1])
    clipped = old + np.clip(vv - old, -0.2, 0.2)
    expected = 0.1 * 0.5 * np.maximum((vv - ret) ** 2, (clipped - ret) ** 2)
    assert total.item() == pytest.approx((expected * w).sum()) and int(n) == 3


def test_value_positions_in_a_packed_row():
    """The value after EOS sits at the EOS token of its own document (its hidden state predicts past the
    response); per_token writes it, from_token reads it back, and the value mask covers exactly it."""
    from types import SimpleNamespace

    from tulu_mcore.algorithms.rlvr.batch import RolloutBatch, Trajectory

    def traj(ids, prompt_len):
        n = len(ids) - prompt_len
        return Trajectory(ids=np.array(ids), prompt_len=prompt_len, engine_logps=np.zeros(n), finished=True,
                          weight_version=0, dataset="gsm8k", verified=True, score=10.0)

    batch = RolloutBatch([traj([5, 6, 7, 8, 9], 2), traj([1, 2, 3], 2)], samples_per_prompt=1)
    n_values = [value_positions(t.response_len, 8, "after_eos") for t in batch.trajectories]  # 3 + 1, 1 + 1
    batch.trajectories[0].returns, batch.trajectories[1].returns = np.array([1.0, 2, 3, 4]), np.array([5.0, 6])
    run = SimpleNamespace(cfg=SimpleNamespace(train=SimpleNamespace(seq_length=16)), multiple=1, pad_id=0,
                          trim_rows=True)
    [row] = batch.pack(run)
    assert row.cu_seqlens_padded.tolist() == [0, 5, 8]
    values = batch.per_token(row, "returns")
    # document 0: prompt 2 -> positions 1..3 predict the response, position 4 (its EOS) holds the 4th value
    assert values[0].tolist() == [0, 1, 2, 3, 4, 0, 5, 6]
    assert batch.per_token(row, "returns", ones=True)[0].tolist() == [0, 1, 1, 1, 1, 0, 1, 1]
    assert row.loss_mask[0].tolist() == [0, 1, 1, 1, 0, 0, 1, 0]  # the policy's tokens: one fewer each
    extra = {id(t): n - t.response_len for t, n in zip(batch.trajectories, n_values)}
    batch.from_token(row, values * 2, "old_values", extra=lambda t: extra[id(t)])
    assert [t.old_values.tolist() for t in batch.trajectories] == [[2, 4, 6, 8], [10, 12]]
