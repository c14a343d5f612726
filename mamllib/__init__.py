"""mamllib: the library behind the MAML book.

Model-Agnostic Meta-Learning (Finn, Abbeel, Levine, ICML 2017) written with
``torch.func``: parameters are plain dicts of tensors, models run through
``torch.func.functional_call``, and a meta-batch of tasks is batched with ``vmap``.

Every module, by floor (imports point down only):

    batch           the meta-batch container (a task axis on every tensor)
    models          MLP, Conv4: stateless skeletons, ``forward``, parameter init
    fast/           speed only, each tested equal to the readable code it replaces:
                    convolution, normalization (the batched conv-4's CPU kernels),
                    threads (the meta-batch shared among CPU threads), allocator
    data/           store (env vars, cache, atomic writes, free space, stale temp
                    files), omniglot, miniimagenet: archives -> verified uint8 arrays
    presets/        ci / book / paper configs, one file per domain; validation
    paper           the paper's numbers with their sources; complete or partial
    runs            run folders, atomic files, manifests
    notebook        notebooks refuse parameters they do not declare
    plot            the house figure style
    tasks           sinusoid tasks; one N-way K-shot episode sampler for image sets
    maml            inner_step, adapt, the meta-objective (loop, vmap, batched)
    evaluate        adaptation curves on fixed evaluation tasks; mean and 95% CI
    distributed     torch.distributed under torchrun: shard, all-reduce
    train           fit: THE training loop, with its outer steps (Adam; TRPO plugs in)
    baselines       the pretrained and oracle objectives, fine-tuning step sizes
    rl/             envs, locomotion, policy, rollouts, trpo, metarl (the
                    policy-gradient inner step and the meta-surrogate)
    experiments/    sinusoid, fewshot, metarl: config in, trained and evaluated run out
    report          the one writer of metrics, reproduction rows and artifacts
    cli             python -m mamllib train|evaluate|artifact|paper|run|presets
"""

__version__ = "0.1.0"
