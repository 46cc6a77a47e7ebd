"""AdamW's decoupled weight decay, on which parameters: megatron's default leaves norms and biases
undecayed; optim.decay_norms_and_biases=true decays every parameter, as a plain
torch.optim.AdamW(model.parameters(), weight_decay=0.01) does (Tülu 3's RL trainers)."""

import pytest

from tests.conftest import read_json, run_worker


def test_decay_norms_and_biases_decays_every_parameter(tmp_path):
    out = tmp_path / "wd.json"
    run_worker("weight_decay.py", [out], nproc=1)
    res = read_json(out)
    lr, wd = 0.1, 0.01
    for decay_all, params in res.items():
        assert any(p["dim"] == 1 for p in params.values()) and any(p["dim"] == 2 for p in params.values())
        for name, p in params.items():
            # torch AdamW on a zero gradient: p <- p (1 - lr wd), Adam's own step is 0
            decayed = decay_all == "True" or p["dim"] > 1
            want = [x * (1 - lr * wd) if decayed else x for x in p["before"]]
            assert p["after"] == pytest.approx(want, rel=1e-6, abs=1e-9), (decay_all, name)


def test_optim_impl_holds_across_a_resume(tmp_path):
    """torch's load_state_dict adopts the saved groups' fused/foreach flags: a run saved fused would
    resume fused whatever optim.impl says. The resumed optimizer keeps the implementation asked for,
    each parameter's step where torch wants it, and every implementation takes the same next step."""
    out = tmp_path / "impl.json"
    run_worker("optimizer_impl.py", [tmp_path / "ckpt", out], nproc=1)
    res = read_json(out)
    want = {"for_loop": [[False, False]], "foreach": [[False, True]], "fused": [[True, False]]}
    for impl, got in res.items():
        assert got["flags"] == want[impl], (impl, got)
        assert got["step_devices"] == ["cpu"] and got["steps"] == [1.0], (impl, got)
    losses = [got["next_loss"] for got in res.values()]
    assert max(losses) - min(losses) <= 1e-6 * abs(losses[0]), res
