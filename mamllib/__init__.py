"""mamllib: the library behind the MAML book.

Model-Agnostic Meta-Learning (Finn, Abbeel, Levine, ICML 2017) written with
``torch.func``: parameters are plain dicts of tensors, models run through
``torch.func.functional_call``, and a meta-batch of tasks is batched with ``vmap``.

Floors (imports point down only):
    models, presets, runs            -- no MAML, no training
    maml, tasks, plot                -- the math, task distributions, figures
    train, evaluate, baselines, cli  -- loops with side effects
"""

__version__ = "0.1.0"
