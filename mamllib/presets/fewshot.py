"""Few-shot classification presets: Omniglot and MiniImageNet (§5.2, App. A.1).

cbfinn/maml (``main.py`` usage lines, ``maml.py``, ``data_generator.py``) fills in
where the paper is silent; every difference from the paper is said beside its value.
Values marked "ours" are bookkeeping that neither source fixes. Per-iteration costs
behind the ``book`` and ``ci`` sizes: ``benchmarks/README.md``.
"""

from __future__ import annotations

from typing import Any

# Omniglot ---------------------------------------------------------------------------

OMNIGLOT_COMMON: dict[str, Any] = {
    "n_filters": 64,  # App. A.1: conv-4 with 64 filters, strided convolutions
    "outer_lr": 1e-3,  # Adam; cbfinn/maml meta_lr=1e-3
    "n_iterations": 60_000,  # App. A.1
    "first_order": False,  # MAML proper (§5.2)
    "strategy": "vmap",  # ours: "loop" is the readable per-task version
    "scheme": "paper",  # §5.2: 1200 training / 423 test characters
    "rotations": True,  # §5.2: rotations by multiples of 90 degrees as new classes
    "n_eval_tasks": 600,  # cbfinn/maml test: 600 tasks, 95% CI
    "n_eval_steps": 10,  # the curve over 0..10 steps (cbfinn/maml test_num_updates)
    "checkpoint_every": 1_000,  # ours
    "log_every": 50,  # ours
    "seed": 0,  # ours
    "device": "cpu",  # ours
}
# App. A.1, 5-way: alpha 0.4, 1 step in training and 3 at test, meta-batch 32
# (cbfinn/maml's usage line agrees, but its default test_num_updates is 10).
OMNIGLOT_5WAY = {
    **OMNIGLOT_COMMON,
    "n_way": 5,
    "inner_lr": 0.4,
    "n_inner_steps": 1,
    "n_test_inner_steps": 3,
    "meta_batch_size": 32,
}
# App. A.1, 20-way: alpha 0.1, 5 steps in training and at test, meta-batch 16.
OMNIGLOT_20WAY = {
    **OMNIGLOT_COMMON,
    "n_way": 20,
    "inner_lr": 0.1,
    "n_inner_steps": 5,
    "n_test_inner_steps": 5,
    "meta_batch_size": 16,
    # Ours: the fastest path at 20-way on a 2-core CPU (benchmarks/README.md); on a
    # GPU it runs as the batched path.
    "strategy": "threads",
}


def _omniglot_presets(paper: dict[str, Any], k_shot: int) -> dict[str, dict[str, Any]]:
    # The query set has K examples per class, as cbfinn/maml's Omniglot generator
    # (2K images per class: K support, K query).
    paper = {**paper, "k_shot": k_shot, "n_query": k_shot}
    return {
        "paper": paper,
        # Minutes on a laptop CPU: enough to be far above chance, not the paper's.
        # 20-way iterations cost more (5 inner steps, 20 classes), hence fewer.
        "book": {
            **paper,
            "n_iterations": 500 if paper["n_way"] == 5 else 200,
            "n_eval_tasks": 200,
            "checkpoint_every": 250,
        },
        # Seconds: shows learning, nothing more.
        "ci": {
            **paper,
            "n_iterations": 60,
            "meta_batch_size": 4,
            "n_eval_tasks": 20,
            "n_eval_steps": 3,
            "checkpoint_every": 30,
            "log_every": 10,
        },
    }


# MiniImageNet -----------------------------------------------------------------------

MINIIMAGENET_COMMON: dict[str, Any] = {
    "n_way": 5,
    "n_filters": 32,  # App. A.1: 32 filters "to reduce overfitting" (Omniglot: 64)
    "max_pool": True,  # App. A.1: 2x2 max-pooling after each block (--max_pool=True)
    "in_channels": 3,  # 84x84 RGB (data_generator.py img_size=(84, 84))
    "image_size": 84,
    "inner_lr": 0.01,  # App. A.1: alpha = 0.01 (--update_lr=0.01)
    "n_inner_steps": 5,  # App. A.1: 5 steps in meta-training (--num_updates=5)
    "n_test_inner_steps": 10,  # App. A.1: 10 at test (main.py test_num_updates = 10)
    "n_query": 15,  # §5.2: 15 examples per class for the meta-update (main.py: K+15)
    # Test tasks: cbfinn/maml's test generator draws 2K images per class, i.e. K query
    # images (main.py: DataGenerator(update_batch_size*2) when --train=False; its TODO
    # asks "use 15 val examples?"). The paper's intervals fit that: 1.96 sigma/sqrt(600)
    # = 1.84 % needs sigma = 0.23, the spread of the accuracy on 5 query images. We
    # follow the original code here (the paper is silent), for val and test alike.
    "n_eval_query": None,  # None: K per class, set per shot below
    "outer_lr": 1e-3,  # Adam, meta_lr 1e-3
    "n_iterations": 60_000,  # App. A.1 (--metatrain_iterations=60000)
    "clip_grad": 10.0,  # maml.py clips meta-gradients to [-10, 10], MiniImagenet only
    "first_order": False,  # MAML proper; True is Table 1's first-order row
    # Ours: on a CPU the batched path is faster than vmap at 84x84
    # (benchmarks/README.md).
    "strategy": "batched",
    "images_per_class": None,  # all 600 images of every class
    "n_eval_tasks": 600,  # main.py NUM_TEST_POINTS = 600, 95% CI
    "n_eval_steps": 10,  # the curve over 0..10 steps
    # Checkpoint selection on the validation classes (16): every checkpoint_every
    # iterations, accuracy on n_val_tasks fixed val tasks; the best is kept. cbfinn/maml
    # prints a validation accuracy but tests the latest (or --test_iter) model; the
    # paper says nothing. Never selected on test classes.
    "n_val_tasks": 200,  # ours
    "checkpoint_every": 1_000,  # = main.py SAVE_INTERVAL
    "log_every": 50,  # ours
    "seed": 0,  # ours
    "device": "cpu",  # ours
}


def _miniimagenet_presets(k_shot: int, meta_batch_size: int) -> dict[str, dict]:
    paper = {
        **MINIIMAGENET_COMMON,
        "k_shot": k_shot,
        "n_eval_query": k_shot,
        "meta_batch_size": meta_batch_size,
    }
    return {
        "paper": paper,
        # Minutes on a laptop CPU: one paper-sized meta-iteration takes seconds there
        # (80 images of 84x84 per task, 5 inner steps), so the book trains only 20 of
        # the 60,000 meta-iterations, at the paper's shapes, on the first 100 images
        # of each class, and scores 100 test tasks: the machinery and the cost, not
        # the paper's accuracy.
        "book": {
            **paper,
            "images_per_class": 100,
            "n_iterations": 20,
            "n_eval_tasks": 100,
            "n_val_tasks": 10,
            "checkpoint_every": 10,
            "log_every": 2,
        },
        # Under a minute: the machinery runs end to end (training, selection on val
        # tasks, evaluation) at smaller shapes (meta-batch 2, 5 query images per
        # class, 2 inner steps in training and 3 at test) on 20 images per class;
        # far too short to show meta-learning on MiniImageNet.
        "ci": {
            **paper,
            "images_per_class": 20,
            "meta_batch_size": 2,
            "n_query": 5,
            "n_inner_steps": 2,
            "n_test_inner_steps": 3,
            "n_eval_steps": 3,
            "n_iterations": 4,
            "n_eval_tasks": 10,
            "n_val_tasks": 4,
            "checkpoint_every": 2,
            "log_every": 1,
        },
    }


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "omniglot-5way-1shot": _omniglot_presets(OMNIGLOT_5WAY, 1),
    "omniglot-5way-5shot": _omniglot_presets(OMNIGLOT_5WAY, 5),
    "omniglot-20way-1shot": _omniglot_presets(OMNIGLOT_20WAY, 1),
    "omniglot-20way-5shot": _omniglot_presets(OMNIGLOT_20WAY, 5),
    # App. A.1: meta-batch 4 at 1-shot and 2 at 5-shot; cbfinn/maml's usage line for
    # 5-shot says --meta_batch_size=4. We follow the paper.
    "miniimagenet-5way-1shot": _miniimagenet_presets(1, 4),
    "miniimagenet-5way-5shot": _miniimagenet_presets(5, 2),
}
