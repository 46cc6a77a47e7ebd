"""The trainer's end of the collective weight transport (``rlvr.vllm.transport=collective``; the wire
format and the engine's end: :mod:`tulu_mcore.rollout.vllm_side.collective`).

Each pipeline stage sends its own layers (its first rank in the first data-parallel replica, after the
stage's TP gather): nothing is funnelled through rank 0. A sender broadcasts each tensor's own bytes
(no packing copy) and draws bucket k+1 from the export (its TP gather) while bucket k is on the wire.
"""

from __future__ import annotations

import json
import secrets
import socket
import time

import torch
import torch.distributed as dist

from tulu_mcore.rollout.vllm_side.collective import (
    ALIGN,
    broadcast,
    checksum,
    connect_store,
    new_group,
    parse_fault,
)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_sender() -> bool:
    from megatron.core import parallel_state as ps

    return ps.get_data_parallel_rank(with_context_parallel=True) == 0 and ps.get_tensor_model_parallel_rank() == 0


def trainer_host(engine_address: str | None, configured: str | None) -> str:
    """The address the engine's workers reach trainer rank 0's store at: `configured`, else this
    machine's address on the route to the engine (no name resolution needed), else its host name."""
    if configured:
        return configured
    host = engine_address.rpartition(":")[0].strip("[]") if engine_address else "127.0.0.1"
    if host in LOOPBACK:
        return "127.0.0.1"  # an engine on this machine
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))  # UDP: picks the route and its source address, sends nothing
            return s.getsockname()[0]
    except OSError:
        return socket.getfqdn()


class CollectiveSender:
    """One per trainer rank; ranks that send (one per pipeline stage) hold a group with the engine's
    workers. Rank 0 also holds the store the groups meet at."""

    def __init__(self, group, store, device: torch.device):
        self.group, self.store, self.device = group, store, device

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
            group = new_group(store or connect_store(info["host"], info["port"]),
                              f"{info['prefix']}/{ps.get_pipeline_model_parallel_rank()}", 0, 1 + info["workers"],
                              timeout_s, device)
        if answer is not None:
            answer()
        return cls(group, store, device)

    def send(self, buckets, *, verify: bool, fault: str | None = None) -> tuple[int, float]:
        """Stream `buckets` (this rank's share of the export; every rank must pass its iterator, which
        is a collective) to the engine; returns (bytes sent, seconds spent on checksums). An error on
        the wire stops the sending but not the export walk, so no rank waits for this one forever."""
        fault = parse_fault(fault)
        if self.group is None:
            for _ in buckets:
                pass
            return 0, 0.0
        # the bucket on the wire: its works, and the tensors they read (alive until the works are done)
        pending: tuple[list, tuple] = ([], ())
        sent, checksum_s, error = 0, 0.0, None
        for bucket in buckets:  # drawing bucket k+1 (its TP gather) while bucket k is on the wire
            if error is not None:
                continue
            try:
                _wait(pending)
                entries, tensors, nbytes = [], [], 0
                for name, t in bucket:
                    n = t.numel() * t.element_size()
                    raw = t.detach().contiguous().reshape(-1).view(torch.uint8)  # the tensor's own bytes: no copy
                    t0 = time.time()
                    digest = checksum(raw) if verify else None
                    checksum_s += time.time() - t0
                    if fault is not None and fault[0] == "corrupt" and fault[1] == name:
                        raw = raw.clone()  # the test hook: damaged in transit (the trainer's copy untouched)
                        raw[n // 2:n // 2 + 1].bitwise_xor_(0xFF)
                    entries.append([name, str(t.dtype).removeprefix("torch."), list(t.shape), nbytes, n, digest])
                    tensors.append(raw)
                    nbytes += -(-n // ALIGN) * ALIGN  # the receiver's offset of the next tensor
                meta = torch.frombuffer(bytearray(json.dumps(entries).encode()), dtype=torch.uint8).to(self.device)
                header = torch.tensor([meta.numel(), nbytes], dtype=torch.int64, device=self.device)
                pending = ([broadcast(self.group, x) for x in (header, meta, *tensors)], (header, meta, tensors))
                sent += sum(e[4] for e in entries)
            except Exception as e:  # the wire broke (a worker died) or timed out (a worker hangs)
                error = e
        try:
            if error is None:
                _wait(pending)
                end = torch.tensor([-1, 0], dtype=torch.int64, device=self.device)
                _wait(([broadcast(self.group, end)], end))
        except Exception as e:
            error = e
        if error is not None:
            raise ConnectionError(f"the collective weight transport failed: {type(error).__name__}: "
                                  f"{str(error).splitlines()[0] if str(error) else ''}") from error
        return sent, checksum_s

    def close(self) -> None:
        self.group = None
        self.store = None


def _wait(pending: tuple[list, object]) -> None:
    """Wait for the works of (works, the tensors they read)."""
    for work in pending[0]:
        work.wait()
