"""Meta-reinforcement learning (paper §5.3, App. A.2): a room beside the others.

Floors, as in the rest of mamllib (imports point down only):
    envs, policy             -- the 2D navigation tasks; a Gaussian MLP policy as params
    rollouts, trpo, metarl   -- sampling and advantages; CG and TRPO; MAML's inner PG
                                step and the meta-surrogate (torch only)
    train                    -- meta-training, baselines, evaluation, checkpoints

Introduced in notebook 09 (meta-reinforcement learning: 2D navigation).
"""
