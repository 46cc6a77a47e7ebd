"""scripts/nccl_check.py, the cluster sanity check the README asks for before a long job, on 2 CPU ranks
(gloo): it all-reduces, checks the sum and prints the bus bandwidth."""

from tests import rank_pool
from tests.conftest import ROOT


def test_nccl_check_runs_and_checks_the_sum():
    proc = rank_pool.run(str(ROOT / "scripts" / "nccl_check.py"), ["--backend", "gloo", "--mib", "4", "--iters", "2"], 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "all_reduce over 2 ranks (gloo): 4 MiB" in proc.stdout and "sum ok" in proc.stdout
