"""The trainer's end of the collective weight transport (``rlvr.vllm.transport=collective``; the wire
format and the engine's end: :mod:`tulu_mcore.rollout.vllm_side.collective`).

Each pipeline stage sends its own layers (its first rank in the first data-parallel replica, after the
stage's TP gather): nothing is funnelled through rank 0. A sender packs bucket k+1 (its TP gather
included) while bucket k is on the wire, in two send buffers reused across pushes.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections import deque

import torch
import torch.distributed as dist

from tulu_mcore.rollout.vllm_side.collective import broadcast, checksum, new_group, parse_fault

LOOPBACK = ("127.0.0.1", "localhost", "::1")
ALIGN = 64


def is_sender() -> bool:
    from megatron.core import parallel_state as ps

    return ps.get_data_parallel_rank(with_context_parallel=True) == 0 and ps.get_tensor_model_parallel_rank() == 0


def trainer_host(engine_address: str | None, configured: str | None) -> str:
    """The address the engine's workers reach trainer rank 0's store at."""
    if configured:
        return configured
    if engine_address is None or engine_address.rpartition(":")[0] in LOOPBACK:
        return "127.0.0.1"  # an engine on this machine
    return socket.getfqdn()


class CollectiveSender:
    """One per trainer rank; ranks that send (one per pipeline stage) hold a group with the engine's
    workers. Rank 0 also holds the store the groups meet at."""

    def __init__(self, group, store, device: torch.device):
        self.group, self.store, self.device = group, store, device
        self.buffers = [torch.empty(0, dtype=torch.uint8, device=device) for _ in range(2)]

    @classmethod
    def connect(cls, request_join, *, host: str | None, workers: int | None, timeout_s: float,
                device: torch.device):
        """Collective over the trainer's ranks. Rank 0 (the only one whose `host`, `workers` and
        `request_join` count) hosts the store and calls `request_join(info)`, which must ask the engine's
        `workers` to join without waiting for them (the senders join here meanwhile) and return a
        function that waits for the engine's answer."""
        from megatron.core import parallel_state as ps

        store, box = None, [None]
        if dist.get_rank() == 0:
            store = dist.TCPStore("0.0.0.0", 0, is_master=True, wait_for_workers=False)
            box[0] = {"host": host, "port": store.port, "prefix": f"tulu-weights-{secrets.token_hex(4)}",
                      "senders": ps.get_pipeline_model_parallel_world_size(), "workers": workers,
                      "timeout_s": float(timeout_s)}
        dist.broadcast_object_list(box, src=0)
        info = box[0]
        answer = request_join(info) if dist.get_rank() == 0 else None
        group = None
        if is_sender():
            group = new_group(info["host"], info["port"], f"{info['prefix']}/{ps.get_pipeline_model_parallel_rank()}",
                              0, 1 + info["workers"], timeout_s, device, store=store)
        if answer is not None:
            answer()
        return cls(group, store, device)

    def _buffer(self, i: int, nbytes: int) -> torch.Tensor:
        if self.buffers[i].numel() < nbytes:
            self.buffers[i] = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        return self.buffers[i][:nbytes]

    def send(self, buckets, *, verify: bool, fault: str | None = None) -> tuple[int, float]:
        """Stream `buckets` (this rank's share of the export; every rank must pass its iterator, which
        is a collective) to the engine; returns (bytes sent, seconds spent on checksums). An error on
        the wire stops the sending but not the export walk, so no rank waits for this one forever."""
        fault = parse_fault(fault)
        if self.group is None:
            for _ in buckets:
                pass
            return 0, 0.0
        in_flight: deque = deque()  # the works of the buckets on the wire (at most two: one per buffer)
        sent, checksum_s, error = 0, 0.0, None
        for k, bucket in enumerate(buckets):
            if error is not None:
                continue
            try:
                if len(in_flight) == 2:  # its buffer is the one this bucket goes into
                    _wait(in_flight.popleft())
                offsets, nbytes = [], 0
                for _, t in bucket:  # each tensor at a 64-byte boundary: every dtype can view it there
                    offsets.append(nbytes)
                    nbytes += -(-t.numel() * t.element_size() // ALIGN) * ALIGN
                data = self._buffer(k % 2, nbytes)
                entries = []
                for (name, t), off in zip(bucket, offsets):
                    n = t.numel() * t.element_size()
                    view = data[off:off + n]
                    view.copy_(t.detach().reshape(-1).view(torch.uint8))
                    t0 = time.time()
                    digest = checksum(view) if verify else None
                    checksum_s += time.time() - t0
                    if fault is not None and fault[0] == "corrupt" and fault[1] == name:
                        view[n // 2:n // 2 + 1].bitwise_xor_(0xFF)  # the test hook: damaged in transit
                    entries.append([name, str(t.dtype).removeprefix("torch."), list(t.shape), off, n, digest])
                meta = torch.frombuffer(bytearray(json.dumps(entries).encode()), dtype=torch.uint8).to(self.device)
                header = torch.tensor([meta.numel(), nbytes], dtype=torch.int64, device=self.device)
                # the small tensors ride along with their works: alive until the works are done
                in_flight.append([broadcast(self.group, header), broadcast(self.group, meta),
                                  broadcast(self.group, data), (header, meta)])
                sent += sum(t.numel() * t.element_size() for _, t in bucket)
            except Exception as e:  # the wire broke (a worker died) or timed out (a worker hangs)
                error = e
        try:
            if error is None:
                end = torch.tensor([-1, 0], dtype=torch.int64, device=self.device)
                in_flight.append([broadcast(self.group, end), end])
                for works in in_flight:
                    _wait(works)
        except Exception as e:
            error = e
        if error is not None:
            raise ConnectionError(f"the collective weight transport failed: {type(error).__name__}: "
                                  f"{str(error).splitlines()[0] if str(error) else ''}") from error
        return sent, checksum_s

    def close(self) -> None:
        self.group = None
        self.store = None


def _wait(works) -> None:
    for w in works:
        if not isinstance(w, (tuple, torch.Tensor)):
            w.wait()
