"""Which examples each optimizer step trains on: a deterministic function of (seed, step).

Each epoch is a permutation of the dataset's units (conversations, or preference pairs) drawn from
``seed + epoch``; step s takes the next `global_batch` units of the concatenated epochs (an epoch's
remainder that does not fill a batch is dropped, so every step sees exactly `global_batch` units). Data-parallel rank r takes every
DP-th example of its step and packs them into rows. Because the step number alone determines the
batch, the data cursor saved in a checkpoint is the step itself, and a resumed run (at any layout)
sees exactly the examples it would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tulu_mcore.data.cache import TokenizedData
from tulu_mcore.data.packing import PackedRow, pack
from tulu_mcore.errors import UserError


@dataclass(frozen=True)
class Cursor:
    """Where in the data a step is: serialisable into checkpoints."""

    step: int
    epoch: int
    index_in_epoch: int


class StepBatches:
    def __init__(self, data: TokenizedData, *, global_batch: int, seed: int, shuffle: bool = True):
        self.data = data
        self.global_batch = global_batch
        self.seed = seed
        self.shuffle = shuffle
        self.steps_per_epoch = data.units // global_batch
        if self.steps_per_epoch == 0:
            what = "pairs" if data.group_size == 2 else "examples"
            raise UserError(
                f"the data holds {data.units} usable {what}, fewer than one global batch of "
                f"{global_batch}: lower train.global_batch_size or add data"
            )
        self._perm_epoch, self._perm = -1, None

    def cursor(self, step: int) -> Cursor:
        epoch, k = divmod(step, self.steps_per_epoch)
        return Cursor(step, epoch, k * self.global_batch)

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            n = self.data.units
            self._perm = (np.random.default_rng(self.seed + epoch).permutation(n) if self.shuffle
                          else np.arange(n))
            self._perm_epoch = epoch
        return self._perm

    def global_indices(self, step: int) -> np.ndarray:
        """The dataset indices of step `step` (0-based), all ranks together."""
        c = self.cursor(step)
        return self._permutation(c.epoch)[c.index_in_epoch:c.index_in_epoch + self.global_batch]

    def rows(self, step: int, *, dp_rank: int, dp_size: int, capacity: int, multiple: int, pad_id: int,
             rows_multiple: int = 1, trim: bool = True) -> list[PackedRow]:
        mine = [int(i) for i in self.global_indices(step)[dp_rank::dp_size]]
        return pack_units(self.data, mine, capacity=capacity, multiple=multiple, pad_id=pad_id,
                          rows_multiple=rows_multiple, trim=trim)


def pack_units(data: TokenizedData, units: list[int], *, capacity: int, multiple: int, pad_id: int,
               rows_multiple: int = 1, trim: bool = True) -> list[PackedRow]:
    """Rows holding the given units of `data` (a preference pair's two sequences share a row)."""
    examples = [e for i in units for e in data.unit(i)]
    try:
        return pack(examples, capacity, multiple=multiple, pad_id=pad_id, rows_multiple=rows_multiple, trim=trim,
                    group_size=data.group_size, ids=units)
    except ValueError as e:
        if data.group_size == 1:
            raise
        raise UserError(f"a preference pair does not fit one row ({e}): a pair's chosen and rejected "
                        "sequences share a row, so train.seq_length must be at least 2 x data.max_seq_len"
                        ) from None
