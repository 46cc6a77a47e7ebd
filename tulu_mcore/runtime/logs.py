"""Keep the console readable: silence the start-up warnings megatron-core and torch print about optional
GPU libraries that a CPU run (or a run without Apex) does not have. Real problems still surface."""

import logging
import warnings

_MESSAGES = (
    r"Transformer Engine and Apex are not installed.*",
    r"Apex is not installed.*",
    r"absl\.logging is not installed.*",
    r"The following imports from `dynamic_context\.py`.*",
    r"MLP requires ffn_hidden_size.*",
    r"full scope is deprecated.*",
    r"torch\.distributed is disabled, unavailable or uninitialized.*",
    r"The argument order of load has been changed.*",
    r"TypedStorage is deprecated.*",
    r"MimoModelConfig is experimental.*",
    # megatron's distributed optimizer reads .grad of its fp32 main-parameter views (harmless)
    r"The \.grad attribute of a Tensor that is not a leaf Tensor is being accessed.*",
)


class _DropMessages(logging.Filter):
    def __init__(self, needles: tuple[str, ...]):
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(n in msg for n in self.needles)


def quiet_known_warnings() -> None:
    for pattern in _MESSAGES:
        warnings.filterwarnings("ignore", message=pattern)
    # logger filters see only records logged to that very logger: name the emitting modules
    drop = _DropMessages(("MCore's async save is deprecated", "No CUDA runtime is found",
                          "full_param_layout not provided"))
    for name in ("megatron.core.dist_checkpointing.strategies.torch", "torch.utils.cpp_extension",
                 "megatron.core.distributed.distributed_data_parallel"):
        logging.getLogger(name).addFilter(drop)


def progress(total: int, desc: str, unit: str = "it", enabled: bool = True):
    """A tqdm bar on an interactive terminal; nothing when output goes to a file or pipe."""
    import sys

    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not (enabled and sys.stderr.isatty()))
