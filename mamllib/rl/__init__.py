"""Meta-reinforcement learning (paper §5.3, App. A.2): a room beside the others.

Floors, as in the rest of mamllib (imports point down only):
    envs, locomotion,        -- the 2D navigation tasks; MuJoCo half-cheetah and ant;
    policy, share               a Gaussian MLP policy as params; one rank's share of a
                                meta-batch and random draws independent of it
    rollouts, trpo, metarl   -- sampling and advantages; CG and TRPO; MAML's inner PG
                                step and the meta-surrogate (torch only)
    mamllib.experiments      -- meta-training, baselines, evaluation, checkpoints
    .metarl                     (under torchrun too)

Introduced in notebook 09 (meta-reinforcement learning: 2D navigation).
"""
