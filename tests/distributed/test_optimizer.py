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
