"""Distributed start-up from torchrun / Slurm variables, and the CPU runtime (in subprocesses: it patches
torch process-wide)."""

import subprocess
import sys
import textwrap

import pytest

from tulu_mcore.runtime.distributed import detect_env, expand_nodelist


def test_torchrun_env_wins():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "1234",
           "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}
    e = detect_env(env)
    assert (e.rank, e.world_size, e.local_rank, e.master_addr, e.master_port, e.source) == (
        3, 8, 1, "n1", 1234, "torchrun")


def test_slurm_one_task_per_gpu():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "gpu[07-08]"}
    e = detect_env(env)
    assert (e.rank, e.world_size, e.local_rank, e.master_addr, e.source) == (5, 16, 5, "gpu07", "slurm")
    assert e.master_port == 20000 + 4242


def test_single_process_without_launcher():
    e = detect_env({})
    assert (e.rank, e.world_size, e.source) == (0, 1, "single")


@pytest.mark.parametrize(
    "nodelist,hosts",
    [("node1", ["node1"]), ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
     ("a[9-11],b2", ["a9", "a10", "a11", "b2"])],
)
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


def run_py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)


def test_cpu_runtime_maps_cuda_onto_cpu():
    proc = run_py("""
        import torch
        from tulu_mcore.runtime import cpu
        cpu.install(); cpu.install()  # idempotent
        assert torch.ones(2, device="cuda").device.type == "cpu"
        assert torch.zeros(2).to("cuda").device.type == "cpu"
        assert torch.cuda.current_device() == "cpu"
        # seeding the "CUDA" generator seeds the CPU one: ranks draw identical weights
        torch.cuda.manual_seed(7); a = torch.rand(3)
        torch.manual_seed(7); b = torch.rand(3)
        assert torch.equal(a, b)
        # device contexts still work for the wrapped factories (transformers' meta init relies on it)
        with torch.device("meta"):
            assert torch.arange(4).device.type == "meta" and torch.empty(2).device.type == "meta"
        print("OK")
    """)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr


def test_cpu_runtime_keeps_transformers_loading_intact(tiny_hf):
    # regression: wrapped factories used to bypass torch.device("meta"), leaving garbage RoPE buffers
    proc = run_py(f"""
        import torch
        from tulu_mcore.runtime import cpu
        from transformers import LlamaForCausalLM
        clean = LlamaForCausalLM.from_pretrained("{tiny_hf['untied']}").model.rotary_emb.inv_freq.clone()
        cpu.install()
        shimmed = LlamaForCausalLM.from_pretrained("{tiny_hf['untied']}").model.rotary_emb.inv_freq
        assert torch.equal(clean, shimmed), (clean, shimmed)
        print("OK")
    """)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr


def test_cpu_runtime_refuses_other_megatron_versions():
    proc = run_py("""
        from megatron.core import package_info
        package_info.MINOR = 18
        from tulu_mcore.runtime import cpu
        try:
            cpu.install()
        except RuntimeError as e:
            print("REFUSED", e)
    """)
    assert "REFUSED" in proc.stdout and "0.19.2" in proc.stdout and "0.18.2" in proc.stdout, proc.stdout + proc.stderr


def test_fp8_without_te_is_an_error_not_a_no_op():
    from tulu_mcore.arch import Layout
    from tulu_mcore.config.compose import compose
    from tulu_mcore.errors import ConfigError
    from tulu_mcore.models.factory import transformer_config

    cfg = compose(["precision=fp8_delayed"])
    layout = Layout(1, 1, 1, 1, 1, 1, False, (4,), 1)
    with pytest.raises(ConfigError, match="Transformer Engine"):
        transformer_config(cfg.model.arch, layout, cfg.precision, device="cpu", attention="sdpa")
