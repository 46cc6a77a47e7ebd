"""RL with verifiable rewards, Tülu 3's final stage: everything RLVR owns lives in this folder.

* :mod:`.grpo` (``recipe=rlvr_grpo``, Tülu 3.1) and :mod:`.ppo` (``recipe=rlvr_ppo``, Tülu 3): the
  losses and each recipe's step;
* :mod:`.prompts`: the verifiable prompts of a run and which of them each step takes;
* :mod:`.driver`: each step's rollouts from the engine ``rlvr.engine`` names, and the weight push;
* :mod:`.batch`: the typed rollout batch (:class:`~.batch.Trajectory` per prompt + response, with a
  field for what each stage adds), its verifier scores, packing into rows and the per-token
  scatter/gather between trajectories and rows;
* :mod:`.value`: PPO's value model.

The rollout engines themselves are :mod:`tulu_mcore.rollout`; the verifiers :mod:`tulu_mcore.rewards`;
the loop, checkpoints and metrics :class:`tulu_mcore.training.run.TrainingRun`.
"""
