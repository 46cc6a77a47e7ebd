"""Data synthesis on the project's own engines (``tulu-synth``): Tülu 3's persona-driven prompts and
responses, on-policy preference pairs rated by an LLM judge, and RLVR prompts with verifiable ground
truth; every output sharded, resumable and decontaminated before it is final.

* :mod:`~tulu_mcore.synth.config`: the verbs' configs (Hydra, ``synth/conf/<verb>.yaml``);
* :mod:`~tulu_mcore.synth.engines`: text in, text out over the rollout engines (vLLM, megatron);
* :mod:`~tulu_mcore.synth.shards`: resumable sharded JSONL and the final, decontaminated files;
* :mod:`~tulu_mcore.synth.constraints`: the 25 IFEval constraint categories with verifiable arguments;
* :mod:`~tulu_mcore.synth.templates`: the persona synthesis prompts;
* :mod:`~tulu_mcore.synth.judge`, :mod:`~tulu_mcore.synth.binarize`: judge prompts and parsers, and
  chosen/rejected from ratings;
* :mod:`~tulu_mcore.synth.filters`: self-consistency, constraint checks, duplicates;
* :mod:`~tulu_mcore.synth.personas`, :mod:`~tulu_mcore.synth.preferences`, :mod:`~tulu_mcore.synth.rlvr`:
  the three verbs.
"""
