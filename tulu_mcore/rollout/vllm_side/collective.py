"""The collective weight transport (``rlvr.vllm.transport=collective``): its wire format, checksum and
receiving end. Imported by the trainer (:mod:`tulu_mcore.rollout.collective`, the sending end) and by
the vLLM engine's workers (``worker.py``, in vLLM's own environment): torch and the standard library only.

One torch.distributed group per sending trainer rank (a pipeline stage's first rank): group rank 0 is
the sender, ranks 1..W the engine's W workers (all nodes of a multi-node engine), over a TCPStore that
trainer rank 0 hosts; gloo on CPUs, NCCL on GPUs, the same code. Groups are built directly on the
store, outside either side's default process group (the trainer and the engine each have their own).

Per bucket, broadcasts from the sender: a header ``int64[2]`` = (JSON bytes, bucket bytes), the JSON
(``[[name, dtype, shape, offset, nbytes, checksum], ...]``), then each tensor's bytes, which every worker
receives at its offset (a multiple of ALIGN) in one of two buffers it reuses for every bucket. A header
of (-1, 0) ends a sender's stream. Each tensor's checksum is taken on
the sender before the send and recomputed by every worker from its received bytes before loading.
"""

import datetime
import json
import os
import time

import torch
import torch.distributed as dist

STORE_TIMEOUT_S = 300.0  # joining the groups (both sides start it within one request)
ALIGN = 64  # each tensor's offset in a worker's receive buffer: a boundary where every dtype can view it


def checksum(data: torch.Tensor) -> list[int]:
    """A fast position-sensitive hash of a tensor's bytes, computed where they are (no host copy of a
    device tensor), in one pass: its 64-bit words summed in 64 contiguous slices (int64, wrapping), then
    the plain and the slice-index-weighted sums of those; bytes after the last whole word count as a
    65th slice. Integer sums wrap alike in any order: the same on every device and torch version. A
    flipped bit changes the plain sum; words swapped between slices change the weighted one."""
    raw = data.reshape(-1).view(torch.uint8)
    if raw.data_ptr() % 8:  # an unaligned view (never a packed bucket's): an aligned copy, the same bytes
        raw = raw.clone()
    whole = raw.numel() // 8 * 8
    words = raw[:whole].view(torch.int64)
    k = words.numel() // 64 * 64
    slices = words[:k].view(64, -1).sum(1) if k else torch.zeros(64, dtype=torch.int64, device=raw.device)
    rest = words[k:].sum() + raw[whole:].to(torch.int64).sum()
    index = torch.arange(1, 65, dtype=torch.int64, device=raw.device)
    total = slices.sum() + rest
    weighted = (slices * index).sum() + 65 * rest
    return [int(v) for v in torch.stack([total, weighted]).tolist()]


def connect_store(host: str, port: int):
    """A client of the TCPStore trainer rank 0 hosts, where the groups meet."""
    return dist.TCPStore(host, port, is_master=False, timeout=datetime.timedelta(seconds=STORE_TIMEOUT_S))


def new_group(store, prefix: str, rank: int, size: int, timeout_s: float, device: torch.device):
    """A process group of `size` ranks meeting at `store` (keys under `prefix`), outside the default
    group: NCCL for CUDA tensors, gloo otherwise; operations time out after `timeout_s`."""
    timeout = datetime.timedelta(seconds=timeout_s)
    prefixed = dist.PrefixStore(prefix, store)
    if device.type == "cuda":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(prefixed, rank, size, opts)
    return dist.ProcessGroupGloo(prefixed, rank, size, timeout)


def broadcast(group, tensor: torch.Tensor):
    """Broadcast from group rank 0 (the sender); returns the work to wait on."""
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    return group.broadcast([tensor], opts)


def parse_fault(spec: str | None) -> tuple[str, str] | None:
    """A test hook (TULU_WEIGHT_SYNC_FAULT=kind:arg[@push]): corrupt:NAME flips bytes of that tensor in
    transit (sender), overwrite:NAME writes wrong values into that engine parameter after the load, die:K /
    hang:K make a worker exit / stop answering at bucket K (engine); @N: only on the trainer's push N
    (0: the start-up push), which the trainer resolves (fault_for_push)."""
    if not spec:
        return None
    kind, _, arg = spec.partition("@")[0].partition(":")
    if kind not in ("corrupt", "overwrite", "die", "hang") or not arg:
        raise ValueError(f"TULU_WEIGHT_SYNC_FAULT={spec!r}: one of corrupt:NAME, overwrite:NAME, die:K, hang:K")
    return kind, arg


def fault_for_push(spec: str | None, push: int) -> str | None:
    """The test hook `spec` if it applies to the trainer's push number `push`, without its @N."""
    if not spec:
        return None
    hook, _, at = spec.partition("@")
    return hook if not at or int(at) == push else None


class Receiver:
    """A worker's end: its groups (one per sender) and two receive buffers per group, reused across pushes."""

    def __init__(self, info: dict, worker_rank: int, device: torch.device):
        self.device = device
        store = connect_store(info["host"], info["port"])
        self.groups = [new_group(store, f"{info['prefix']}/{s}", 1 + worker_rank, 1 + info["workers"],
                                 info["timeout_s"], device) for s in range(info["senders"])]
        # two receive buffers per sender, reused: bucket k+1 arrives in one while bucket k loads from the other
        self.buffers = [[torch.empty(0, dtype=torch.uint8, device=device) for _ in range(2)] for _ in self.groups]
        self.worker_rank = worker_rank

    def _buffer(self, s: int, slot: int, nbytes: int) -> torch.Tensor:
        if self.buffers[s][slot].numel() < nbytes:
            self.buffers[s][slot] = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        return self.buffers[s][slot][:nbytes]

    def _post(self, s: int, slot: int):
        """The next bucket of sender `s`: its header and JSON, and receives of its tensors posted into
        buffer `slot` (works to wait on); None at the end of the stream."""
        group = self.groups[s]
        header = torch.zeros(2, dtype=torch.int64, device=self.device)
        broadcast(group, header).wait()
        json_len, data_len = (int(v) for v in header.tolist())
        if json_len < 0:
            return None
        raw = torch.empty(json_len, dtype=torch.uint8, device=self.device)
        broadcast(group, raw).wait()
        entries = json.loads(raw.cpu().numpy().tobytes())
        data = self._buffer(s, slot, data_len)
        return entries, data, [broadcast(group, data[off:off + n]) for _, _, _, off, n, _ in entries]

    def receive(self, load, *, verify: bool, fault=None) -> dict:
        """Every sender's stream, in sender order; each bucket checked (with `verify`) then handed to
        `load([(name, tensor), ...])` while the next one arrives. A checksum mismatch does not stop the
        stream (the senders finish and the engine's update stays whole); the first one is returned for
        the trainer to raise. Returns counts, seconds, and the first mismatch (None when all agree)."""
        tensors = nbytes = buckets = 0
        verify_s = load_s = 0.0
        mismatch = None
        for s in range(len(self.groups)):
            slot = 0
            pending = self._post(s, slot)
            while pending is not None:
                entries, data, works = pending
                for work in works:
                    work.wait()
                if fault is not None and fault[0] in ("die", "hang") and buckets == int(fault[1]):
                    print(f"[engine] test hook: worker {self.worker_rank} {'exits' if fault[0] == 'die' else 'hangs'} "
                          f"at bucket {buckets}", flush=True)
                    if fault[0] == "die":
                        os._exit(1)
                    time.sleep(10 ** 6)
                buckets += 1
                slot = 1 - slot
                pending = self._post(s, slot)  # bucket k+1 arrives while bucket k is checked and loaded
                views = [(name, data[off:off + n].view(getattr(torch, dtype)).view(*shape), want)
                         for name, dtype, shape, off, n, want in entries]
                t0 = time.time()
                if verify and mismatch is None:
                    for name, view, want in views:
                        got = checksum(view)
                        if got != want:
                            mismatch = {"tensor": name, "sender": s, "expected": want, "received": got}
                            break
                verify_s += time.time() - t0
                t0 = time.time()
                load([(name, view) for name, view, _ in views])
                load_s += time.time() - t0
                tensors += len(views)
                nbytes += sum(n for *_, n, _ in entries)
        return {"tensors": tensors, "bytes": nbytes, "buckets": buckets, "verify_s": verify_s, "load_s": load_s,
                "mismatch": mismatch}
