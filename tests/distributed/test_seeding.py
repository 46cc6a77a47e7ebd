"""One seed, identical weights: data-parallel replicas agree, and on CPU (full master weights drawn,
then sliced) the randomly initialised model does not depend on the tensor-parallel size."""

import pytest
import torch

from tests.conftest import run_worker


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("init") / "single.pt"
    run_worker("init_weights.py", [out, "runtime.seed=7"], nproc=1)
    return torch.load(out)["weights"]


@pytest.mark.parametrize("layout", ["dp", "tp2"])
def test_random_init_is_layout_invariant(single, tmp_path, layout):
    out = tmp_path / f"{layout}.pt"
    run_worker("init_weights.py", [out, "runtime.seed=7", f"parallel={layout}"], nproc=2)
    got = torch.load(out)
    assert got["replica_spread"] == 0.0
    assert set(got["weights"]) == set(single)
    for name, t in single.items():
        assert torch.equal(got["weights"][name], t), name


def test_other_seed_gives_other_weights(single, tmp_path):
    out = tmp_path / "seed8.pt"
    run_worker("init_weights.py", [out, "runtime.seed=8"], nproc=1)
    other = torch.load(out)["weights"]
    assert not torch.equal(other["model.layers.0.self_attn.q_proj.weight"],
                           single["model.layers.0.self_attn.q_proj.weight"])
