"""The CPU runtime for megatron-core: run megatron-core's CUDA-only code paths on CPU with gloo.

megatron-core assumes CUDA throughout: it passes ``torch.cuda.current_device()`` straight into
``device=``, builds tensors with ``device="cuda"``, seeds the CUDA generator, waits on CUDA streams and
events for gradient sync, and checks ``param.type() == "torch.cuda.FloatTensor"``. This module maps all
of that onto the CPU so that every parallel mode (TP, SP, PP, VPP, CP, DP, the distributed optimizer,
recompute, torch_dist checkpoints) runs on a laptop or a CI machine.

It is written for one megatron-core version and refuses any other: the patches touch private
functions whose behaviour changes between releases, and a silently wrong patch corrupts training
(for example TP shards initialised from different seeds) without raising anything.

Install it with :func:`install` before building any megatron module; it is idempotent.
"""

from __future__ import annotations

import contextlib
import functools
import logging

import torch
from torch.overrides import TorchFunctionMode

MEGATRON_CORE_VERSION = "0.19.2"

_installed = False


def megatron_core_version() -> str:
    from megatron.core import package_info

    return ".".join(str(x) for x in (package_info.MAJOR, package_info.MINOR, package_info.PATCH))


def check_megatron_version() -> None:
    found = megatron_core_version()
    if found != MEGATRON_CORE_VERSION:
        raise RuntimeError(
            f"the CPU runtime was written for megatron-core {MEGATRON_CORE_VERSION} but "
            f"{found} is installed; install megatron-core=={MEGATRON_CORE_VERSION} "
            "(the version pinned in pyproject.toml) or use a CUDA device"
        )


def is_installed() -> bool:
    return _installed


def _to_cpu_device(d):
    if isinstance(d, str) and d.startswith("cuda"):
        return "cpu"
    if isinstance(d, torch.device) and d.type == "cuda":
        return torch.device("cpu")
    if isinstance(d, int) and not isinstance(d, bool):  # a CUDA ordinal
        return "cpu"
    return d


class _CudaToCpu(TorchFunctionMode):
    """Rewrites device='cuda' / .to('cuda') / pin_memory=True on every torch call."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "device" in kwargs:
            kwargs["device"] = _to_cpu_device(kwargs["device"])
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if (
            func is torch.Tensor.to
            and len(args) > 1
            and isinstance(args[1], (str, int, torch.device))
            and not isinstance(args[1], bool)
        ):
            args = (args[0], _to_cpu_device(args[1])) + tuple(args[2:])
        return func(*args, **kwargs)


class _Stream:
    def __init__(self, *a, **k):
        pass

    def wait_stream(self, *a, **k):
        pass

    def wait_event(self, *a, **k):
        pass

    def record_event(self, event=None):
        return event or _Event()

    def synchronize(self):
        pass

    def query(self):
        return True

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


class _Event:
    def __init__(self, *a, **k):
        pass

    def record(self, *a, **k):
        pass

    def wait(self, *a, **k):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True

    def elapsed_time(self, other):
        return 0.0


# Factories that megatron calls with device="cuda". A TorchFunctionMode is popped while its own
# handler runs, and the whole backward pass runs inside the handler of Tensor.backward, so code that
# runs during backward (activation recompute re-runs the forward) escapes the mode: wrap these at
# module level as well.
_FACTORIES = (
    "ones", "zeros", "empty", "full", "arange", "tensor", "rand", "randn", "randint", "randperm",
    "eye", "linspace", "empty_strided", "as_tensor", "ones_like", "zeros_like", "empty_like",
    "full_like", "randn_like", "rand_like", "randint_like", "tril_indices", "triu_indices",
)


def _wrap_factory(fn):
    @functools.wraps(fn)
    def wrapped(*a, **k):
        if "device" in k:
            k["device"] = _to_cpu_device(k["device"])
        if k.get("pin_memory"):
            k["pin_memory"] = False
        return fn(*a, **k)

    return wrapped


def install() -> None:
    """Make megatron-core run on CPU. Call before building any megatron module."""
    global _installed
    if _installed:
        return
    check_megatron_version()
    if torch.cuda.is_available():
        # Harmless, but almost certainly not what the user meant: a CUDA machine running on CPU.
        logging.getLogger(__name__).warning("CUDA is available but the CPU runtime was requested")

    C = torch.cuda
    # Device queries and synchronisation.
    C.current_device = lambda: "cpu"  # megatron passes this straight into device=
    C.set_device = lambda *a, **k: None
    C.synchronize = lambda *a, **k: None
    C.empty_cache = lambda *a, **k: None
    C.device_count = lambda: 1
    for name in ("memory_allocated", "max_memory_allocated", "memory_reserved", "max_memory_reserved"):
        setattr(C, name, lambda *a, **k: 0)
    C.reset_peak_memory_stats = lambda *a, **k: None
    C.mem_get_info = lambda *a, **k: (64 << 30, 64 << 30)
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.pin_memory = lambda self, *a, **k: self
    torch.Tensor.record_stream = lambda self, *a, **k: None

    # Streams and events: DDP grad sync, distributed-optimizer param gather, inference timing.
    stream = _Stream()
    C.Stream = _Stream
    C.Event = _Event
    C.current_stream = lambda *a, **k: stream
    C.default_stream = lambda *a, **k: stream
    C.stream = lambda s=None: contextlib.nullcontext()

    # RNG. cuda.manual_seed -> the CPU generator, so model_parallel_cuda_manual_seed(seed) seeds every
    # rank identically (use_cpu_initialization draws full master weights from it, then slices).
    # A no-op here would leave each rank with a different seed: TP shards of different matrices and
    # diverging DP replicas, with no error.
    C.manual_seed = lambda seed, *a, **k: torch.default_generator.manual_seed(int(seed))
    C.manual_seed_all = lambda seed, *a, **k: None  # torch.manual_seed() calls this; must not recurse
    C.get_rng_state = lambda *a, **k: torch.get_rng_state()
    C.set_rng_state = lambda s, *a, **k: torch.set_rng_state(s)
    C.default_generators = (torch.default_generator,)

    _CudaToCpu().__enter__()
    # `with torch.device(...)` recognises factories by identity in a set it builds once from the
    # torch module's attributes; build it now, from the originals our wrappers call, or the wrapped
    # names would bypass device contexts (transformers' meta-device init then leaves garbage buffers).
    try:
        from torch.utils._device import _device_constructors

        _device_constructors()
    except ImportError:  # a torch without device contexts: nothing to preserve
        pass
    for name in _FACTORIES:
        setattr(torch, name, _wrap_factory(getattr(torch, name)))

    # The optimizer and gradient clipping assert 'torch.cuda.FloatTensor'-style type strings.
    orig_type = torch.Tensor.type

    def _type(self, dtype=None, non_blocking=False, **kw):
        if dtype is None:
            s = orig_type(self)
            return s if s.startswith("torch.cuda.") else s.replace("torch.", "torch.cuda.", 1)
        return orig_type(self, dtype, non_blocking, **kw)

    torch.Tensor.type = _type

    import megatron.core.tensor_parallel.random as mrandom

    mrandom._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda s, *a, **k: torch.set_rng_state(s)
    # CPU and "CUDA" RNG are one generator here, so the tracker's fork() warns on every call.
    logging.getLogger("megatron.core.tensor_parallel.random").setLevel(logging.ERROR)

    if not mrandom.HAVE_TE:
        # CheckpointWithoutOutput (selective recompute of "layernorm") sets self.fp8 = (fp8 is not
        # None), always True, then calls TE-only symbols: stub them when TE is absent.
        class _NoFP8:
            is_fp8_enabled = staticmethod(lambda: False)
            get_fp8_recipe = staticmethod(lambda: None)

        mrandom.FP8GlobalStateManager = _NoFP8
        mrandom.activation_recompute_forward = lambda *a, **k: contextlib.nullcontext()
        mrandom.fp8_autocast = lambda *a, **k: contextlib.nullcontext()

    _installed = True
