"""tulu_mcore: the Tülu 3 post-training recipe (SFT, DPO, RLVR) on megatron-core."""

__version__ = "0.1.0"
