"""mamllib: the library behind the MAML book.

Model-Agnostic Meta-Learning (Finn, Abbeel, Levine, ICML 2017) written with
``torch.func``: parameters are plain dicts of tensors, models run through
``torch.func.functional_call``, and a meta-batch of tasks is batched with ``vmap``.

Every module, by floor from the ground up (imports point down only):

    batch           the meta-batch container (a task axis on every tensor)
    plot            the house figure style
    paper           the paper's numbers with their sources; complete or partial;
                    paper_settings: the paper's and the original code's settings
    presets/        ci / book / paper configs, one file per domain; validation
    fast/           speed only, each tested equal to the readable code it replaces:
                    convolution, normalization (CPU kernels), batched_conv4 (the
                    conv-4 over a whole meta-batch at once), allocator; threads (the
                    meta-batch shared among CPU threads) stands above maml
    conv4           the paper's conv-4: TF 'SAME' padding, batch norm with the batch's
                    statistics, cbfinn/maml's initialisation
    models          MLP and the parameter dicts: stateless skeletons, ``forward``,
                    parameter init (the conv-4's names importable here too)
    episodes        N-way K-shot episodes from any image set: split sizes, one sampler
    tasks           sinusoid tasks; the named random streams of a run
    data/           store (env vars, cache, atomic writes, free space, stale temp
                    files); omniglot (cache, splits, episodes) over omniglot_archive
                    (content, preprocessing) and omniglot_fetch (local copy,
                    download); miniimagenet (cache, splits, episodes) over
                    miniimagenet_files (split lists, images, decoding): archives ->
                    verified uint8 arrays
    runs            run folders, atomic files, manifests
    distributed     torch.distributed under torchrun: shard, all-reduce (gradients,
                    weighted means)
    maml            inner_step, adapt, the meta-objective (loop, vmap, batched)
    evaluate        adaptation curves on fixed evaluation tasks; mean and 95% CI
    baselines       the pretrained and oracle objectives, fine-tuning step sizes
    report/         writer (the one writer of metrics, reproduction rows and
                    artifacts), artifacts (the readers chapters build their tables
                    with), reproduction and settings (the book's results pages)
    progress        what a run shows while it runs: the bar's switch, checkpoint lines
    checkpoints     a checkpoint read back (other settings refused); the run's lock
    outer_steps     what one iteration computes: Adam on an objective, MAML's
                    meta-objective (TRPO plugs in)
    algorithms/     after MAML, each an objective for the same training loop: reptile,
                    anil (and NIL), protonet (and Proto-MAML), imaml (implicit
                    gradients by conjugate gradient), metasgd (Meta-SGD, MAML++'s
                    per-step learning rates and multi-step loss)
    train           fit: THE training loop, its guards, resume and interrupts
    rl/             envs, locomotion, policy, share (a rank's share of a meta-batch
                    and random draws independent of it), rollouts, trpo, metarl (the
                    policy-gradient inner step and the meta-surrogate)
    experiments/    sinusoid, fewshot (scoring in fewshot_evaluation, the files a run
                    writes in fewshot_results), metarl (metarl_setup: environments
                    and policies; metarl_trpo: the TRPO outer step, under torchrun
                    too; metarl_results: evaluation and results): config in,
                    trained and evaluated run out
    notebook        a chapter's setup: parameters it does not declare and experiments
                    of other chapters refused, config and run folder in one call
    commands        what each command does: train|evaluate, artifact, paper, run
    cli             python -m mamllib train|evaluate|artifact|paper|run|presets: the
                    parser, exit statuses
"""

__version__ = "0.1.0"
