"""What came after MAML: one small module per algorithm, built on :mod:`mamllib.maml`.

    reptile     Reptile (Nichol, Achiam, Schulman 2018): plain SGD on each task, the
                update direction theta - mean(theta'_i); no second derivatives
    anil        ANIL and NIL (Raghu et al. 2020): adapt the head only; classify by
                the body's features alone; the head/body split of the MLP and conv-4
    protonet    Prototypical networks (Snell et al. 2017) and Proto-MAML
                (Triantafillou et al. 2020): a linear head made from class prototypes
    imaml       iMAML (Rajeswaran et al. 2019): a proximal inner problem and the
                implicit meta-gradient by conjugate gradient, no graph through the
                inner loop
    metasgd     Meta-SGD (Li et al. 2017) and MAML++'s per-layer per-step learning
                rates and multi-step loss (Antoniou et al. 2019)
    maml_plus_plus
                MAML++'s training schedule (Antoniou et al. 2019): the multi-step
                loss and LSLR under vmap, derivative-order and cosine annealing
    pretrained_classifier
                the non-meta baseline (Chen et al. 2019, Tian et al. 2020): a conv-4
                trained on all training classes, a linear head fitted per task
    similarity  linear CKA (Kornblith et al. 2019), to compare a layer's activations
                before and after adaptation (Raghu et al. 2020)

Each exposes an ``objective(params, tasks)`` for :class:`mamllib.outer_steps.AdamStep`
(and so for :func:`mamllib.train.fit`) whose gradient w.r.t. ``params`` is the
algorithm's meta-gradient, as :func:`mamllib.outer_steps.meta_objective` does for
MAML. Reptile's and iMAML's updates are not the gradient of a loss that autograd can
follow; their objectives are surrogates whose value is the query loss and whose
gradient is the update direction (:func:`mamllib.algorithms.reptile.with_gradient`).
Tests: ``tests/test_algorithms.py``, in float64 against finite differences, closed
forms and MAML itself. ``similarity`` (a measurement) and ``pretrained_classifier``
(ordinary training, ``classifier_objective``) are not meta-learners; their tests are
``tests/test_similarity_and_classifier.py``.
"""
