"""Context parallelism in the local core attention, sbhd and packed THD, SDPA and flex: outputs (and
q/k/v gradients for SDPA) at CP=2 equal attention over the whole sequence (K/V gather forward, reduce-scatter
backward, zigzag positions in the mask)."""

from tests.conftest import read_json, run_worker


def test_cp2_matches_full_sequence(tmp_path):
    out = tmp_path / "cp.json"
    run_worker("attention_cp.py", [out], nproc=2)
    errors = read_json(out)
    assert set(errors) == {"sbhd_sdpa", "sbhd_flex", "thd_sdpa", "thd_flex"}
    for case, e in errors.items():
        assert e["out"] < 1e-6, (case, e)
        if case.endswith("sdpa"):  # torch's flex_attention has no backward on CPU
            assert e["grad"] < 1e-5, (case, e)  # fp32 sums over the gathered sequence
