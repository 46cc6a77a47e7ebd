"""The collective weight transport's two ends, without vLLM or megatron: the trainer's sender (this process)
streams buckets to one engine worker's receiver (a subprocess) over a gloo group on a TCPStore. Received
tensors equal the sent ones; a tensor damaged in transit is named by the checksum; a worker that dies or
hangs mid-push stops the sender with an error within the group's timeout, never a hang."""

import json
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ROOT

RECEIVER = r"""
import json, sys, torch
from safetensors.torch import save_file
from tulu_mcore.rollout.vllm_side.collective import Receiver, parse_fault
info, fault, out = json.loads(sys.argv[1]), sys.argv[2] or None, sys.argv[3]
got = {}
stats = Receiver(info, 0, torch.device("cpu")).receive(lambda ws: got.update({n: t.clone() for n, t in ws}),
                                                        verify=True, fault=parse_fault(fault))
save_file(got, out + ".safetensors")
json.dump(stats, open(out, "w"))
"""


def _push(tmp_path, buckets, *, fault: str = "", timeout_s: float = 20.0):
    import torch.distributed as dist

    from tulu_mcore.rollout.collective import CollectiveSender
    from tulu_mcore.rollout.vllm_side.collective import new_group

    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    info = {"host": "127.0.0.1", "port": store.port, "prefix": "t", "senders": 1, "workers": 1, "timeout_s": timeout_s}
    out = tmp_path / "received.json"
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER, json.dumps(info), fault, str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        group = new_group(store, "t/0", 0, 2, timeout_s, torch.device("cpu"))
        sender = CollectiveSender(group, store, torch.device("cpu"))
        t0 = time.time()
        try:
            sent, _ = sender.send(iter(buckets), verify=True, fault=fault.partition("@")[0] or None)
            error = None
        except ConnectionError as e:
            sent, error = 0, e
        elapsed = time.time() - t0
        if error is None:
            proc.wait(timeout=60)
    finally:
        proc.kill()
        log = proc.communicate()[0]
    received = None
    if out.is_file():
        from safetensors.torch import load_file

        received = (json.loads(out.read_text()), load_file(str(out) + ".safetensors"))
    return sent, error, elapsed, received, log


def _buckets():
    g = torch.Generator().manual_seed(0)
    return [[("a", torch.randn(64, 32, generator=g)), ("b", torch.randn(7, generator=g).bfloat16())],
            [("c", torch.randn(3, 5, generator=g).half()), ("d", torch.randn(1001, generator=g))]]


def test_buckets_arrive_as_sent_and_checksums_name_a_damaged_tensor(tmp_path):
    buckets = _buckets()
    sent, error, _, (stats, got), log = _push(tmp_path, buckets)
    assert error is None and stats["mismatch"] is None, log
    assert sent == stats["bytes"] == sum(t.numel() * t.element_size() for b in buckets for _, t in b)
    assert (stats["tensors"], stats["buckets"]) == (4, 2)
    for name, t in (x for b in buckets for x in b):
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name
    # flipped bytes in transit: the stream completes, the receiver names the tensor
    sent, error, _, (stats, got), log = _push(tmp_path, buckets, fault="corrupt:d")
    assert error is None and stats["mismatch"]["tensor"] == "d", (stats, log)
    assert stats["mismatch"]["expected"] != stats["mismatch"]["received"]
    assert not torch.equal(got["d"], buckets[1][1][1]) and torch.equal(got["a"], buckets[0][0][1])


def test_checksum_is_position_sensitive():
    from tulu_mcore.rollout.vllm_side.collective import checksum

    t = torch.arange(4096, dtype=torch.float32)
    swapped = t.clone()
    swapped[[10, 4000]] = swapped[[4000, 10]]
    flipped = t.clone()
    flipped.view(torch.int32)[123] ^= 1 << 7
    assert checksum(t) == checksum(t.clone())
    assert checksum(swapped) != checksum(t) and checksum(flipped) != checksum(t)
    assert checksum(t.bfloat16()) != checksum(t.half())  # the same values in another dtype: other bytes


@pytest.mark.parametrize("fault", ["die:1", "hang:1"])
def test_a_worker_that_dies_or_hangs_mid_push_stops_the_sender_within_the_timeout(tmp_path, fault):
    # buckets larger than the socket buffers: the sender cannot finish into the kernel's buffers
    big = [[("w%d" % i, torch.ones(8 << 20))] for i in range(4)]
    timeout_s = 4.0
    _, error, elapsed, received, log = _push(tmp_path, big, fault=fault, timeout_s=timeout_s)
    assert error is not None and "collective weight transport failed" in str(error), log
    assert received is None and ("exits at bucket 1" if fault.startswith("die") else "hangs at bucket 1") in log
    assert elapsed < timeout_s + 5, elapsed
    if fault.startswith("die"):
        assert elapsed < timeout_s / 2, elapsed  # a dead worker is noticed at once, not at the timeout
