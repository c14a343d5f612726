"""Every experiment is scored on FIXED evaluation tasks, apart from the training ones.

For each experiment this runs a tiny meta-training the way the experiment module does
it, recording every task the training draws and every task the evaluation meets (by
wrapping the task distribution, the environments or the episode samplers, never by
re-deriving the streams), then checks that:

* the evaluation tasks are the same whatever the training seed and however far
  training went (two runs, different seeds and iterations, meet identical tasks), and
  do not depend on torch's global random state;
* sinusoid and meta-RL (navigation, locomotion velocities): no evaluation task
  (amplitude and phase, goal, velocity) is any task of the training meta-batches, while
  the training tasks do change with the seed (the two streams are different ones);
* few-shot: evaluation episodes come from the test split, whose classes are disjoint
  from the training (and validation) classes; the validation episodes that select
  checkpoints (MiniImageNet) are fixed too and come from the validation split.

Omniglot runs on a stand-in data set (no files) with the library's own split of the
1623 character indices: each stand-in image carries its character's index in its
pixels, so that an episode's pixels say where it came from. MiniImageNet uses a few
images per class of the shared copy (``$MAMLLIB_DATA``), skipped loudly without it.
Locomotion needs MuJoCo (skipped without it, as ``test_locomotion.py``).
"""

import csv

import numpy as np
import pytest
import torch
from conftest import DATA_ROOT, needs_miniimagenet

from mamllib.data import omniglot as om
from mamllib.evaluate import evaluation_tasks
from mamllib.experiments import fewshot, metarl, run_name, sinusoid
from mamllib.presets import make_config
from mamllib.rl.envs import Navigation2D
from mamllib.runs import RunFolder
from mamllib.tasks import SinusoidTasks, make_generator


class Recorder:
    """Wraps a method of a class (every instance, wherever it is imported) and keeps
    what each call saw, labelled with the current ``stage``."""

    def __init__(self, monkeypatch, cls, name, keep):
        self.stage, self.calls = None, []
        original = getattr(cls, name)

        def wrapper(obj, *args, **kwargs):
            result = original(obj, *args, **kwargs)
            self.calls.append((self.stage, keep(obj, result, *args, **kwargs)))
            return result

        monkeypatch.setattr(cls, name, wrapper)

    def at(self, stage):
        return [seen for s, seen in self.calls if s == stage]


def apart(a: torch.Tensor, b: torch.Tensor, whole_tasks: bool = False) -> bool:
    """No task of ``a`` [n, d] shares any coordinate value with a task of ``b``
    [m, d] (same column): stricter than "no equal task". Independent continuous draws
    practically never coincide exactly; a shared stream (or a shifted copy of one)
    does. ``whole_tasks``: only equal tasks (every coordinate) count, for long streams
    where single float32 values may meet by chance."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    equal = a[:, None, :] == b[None, :, :]
    return not (equal.all(-1) if whole_tasks else equal).any()


# ------------------------------------------------------------------------------------
# Sinusoid
# ------------------------------------------------------------------------------------


def sinusoid_config(seed, n_iterations):
    return make_config(
        "sinusoid",
        "ci",
        seed=seed,
        n_iterations=n_iterations,
        hidden_sizes=[8],
        meta_batch_size=5,
        eval_k_shots=[5, 10],
        n_eval_tasks=30,
        n_eval_query=10,
        n_val_tasks=10,
        n_eval_steps=1,
        finetune_lrs=[0.01],
        log_every=1,
    )


def test_sinusoid_evaluation_tasks_are_fixed_and_never_training_tasks(monkeypatch):
    rec = Recorder(
        monkeypatch,
        SinusoidTasks,
        "sample",
        lambda obj, batch, *a, **k: batch,
    )
    runs = {}
    for seed, n_iterations in ((0, 4), (1, 2)):
        config = sinusoid_config(seed, n_iterations)
        rec.stage = ("train", seed)
        result = sinusoid.train_method("maml", config)
        assert result.iterations == n_iterations
        torch.manual_seed(100 + seed)  # the global stream must not matter
        rec.stage = ("eval", seed)
        trained = {"maml": result.params, "pretrained": result.params}
        sinusoid.evaluate_methods(trained, config)
        runs[seed] = (rec.at(("train", seed)), rec.at(("eval", seed)))

    for seed, (train, _) in runs.items():
        assert len(train) == (4 if seed == 0 else 2)  # one meta-batch per iteration
        assert all(len(b) == 5 for b in train)
    train_0 = torch.stack([b.amplitude for b in runs[0][0]]).flatten()
    train_1 = torch.stack([b.amplitude for b in runs[1][0]]).flatten()
    assert not torch.equal(train_0[:10], train_1)  # the seed picks the training tasks

    # Evaluation: per K, the evaluation tasks (n_eval_tasks) and the pretrained
    # baseline's validation tasks (n_val_tasks), the same in both runs.
    (_, eval_0), (_, eval_1) = runs[0], runs[1]
    assert len(eval_0) == len(eval_1) > 0
    for a, b in zip(eval_0, eval_1):
        for field in ("amplitude", "phase", "x_support", "y_support", "x_query"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field
    by_size = {}
    for batch in eval_0:
        by_size.setdefault((len(batch), batch.x_support.shape[1]), batch)
    assert set(by_size) == {(30, 5), (30, 10), (10, 5), (10, 10)}

    # No evaluation or validation task is a training task; validation is not test.
    def tasks(batches):
        return torch.cat([torch.stack([b.amplitude, b.phase], dim=1) for b in batches])

    training = torch.cat([tasks(runs[0][0]), tasks(runs[1][0])])
    for (n, k), batch in by_size.items():
        assert apart(tasks([batch]), training), (n, k)
    for k in (5, 10):
        assert apart(tasks([by_size[(30, k)]]), tasks([by_size[(10, k)]]))
    # nor any task of the first 20 meta-batches of other seeds' training streams
    for seed in range(5):
        g = make_generator(seed, "tasks")
        stream = tasks([SinusoidTasks().sample(25, 10, generator=g) for _ in range(20)])
        for batch in by_size.values():
            assert apart(tasks([batch]), stream, whole_tasks=True)

    # The evaluation tasks are what evaluation_tasks gives, every time.
    for k in (5, 10):
        fixed = evaluation_tasks(k, 30, 10)
        again = evaluation_tasks(k, 30, 10)
        assert torch.equal(fixed.amplitude, again.amplitude)
        assert torch.equal(by_size[(30, k)].x_query, fixed.x_query)
        assert torch.equal(by_size[(30, k)].phase, fixed.phase)


# ------------------------------------------------------------------------------------
# Meta-RL: 2D navigation and locomotion
# ------------------------------------------------------------------------------------


def metarl_config(experiment, seed, n_iterations):
    return make_config(
        experiment,
        "ci",
        seed=seed,
        n_iterations=n_iterations,
        meta_batch_size=4,
        n_traj=2,
        horizon=4,
        hidden_sizes=[8],
        cg_iters=2,
        n_eval_tasks=8,
        n_eval_traj=2,
        n_eval_steps=1,
        checkpoint_every=1,
    )


def record_goals(monkeypatch, experiment):
    """Record the goals of every environment the experiment builds."""
    if experiment == "navigation":
        return Recorder(
            monkeypatch,
            Navigation2D,
            "__init__",
            lambda obj, _, goals, *a, **k: goals.clone(),
        )
    from mamllib.rl.locomotion import Locomotion

    return Recorder(
        monkeypatch,
        Locomotion,
        "__init__",
        lambda obj, _, robot, task, goals, *a, **k: goals.clone(),
    )


def check_metarl(monkeypatch, experiment):
    rec = record_goals(monkeypatch, experiment)
    oracle = metarl.initial_params("oracle", metarl_config(experiment, 0, 1))
    returns = {}
    for seed, n_iterations in ((0, 3), (2, 1)):
        config = metarl_config(experiment, seed, n_iterations)
        rec.stage = ("train", seed)
        result = metarl.train_policy("maml", config)
        assert result.iterations == n_iterations
        torch.manual_seed(7 + seed)  # the global stream must not matter
        rec.stage = ("eval", seed)
        trained = {
            "maml": result.params,
            "oracle": oracle,
        }
        evaluation = metarl.evaluate_methods(trained, config)
        returns[seed] = evaluation["curves"]["oracle"]

    train = {s: rec.at(("train", s)) for s in (0, 2)}
    evals = {s: rec.at(("eval", s)) for s in (0, 2)}
    assert len(train[0]) == 3 and len(train[2]) == 1  # one meta-batch per iteration
    assert all(len(g) == 4 for g in train[0] + train[2])
    # Every method, in both runs, meets the same evaluation goals: the fixed ones.
    fixed = metarl.evaluation_goals(8, config=config)
    assert torch.equal(fixed, metarl.evaluation_goals(8, config=config))
    assert len(evals[0]) == len(evals[2]) == 2  # maml's and the oracle's batch
    for goals in evals[0] + evals[2]:
        assert torch.equal(goals, fixed)
    # The same (untrained) oracle scores the same on them: the action noise of the
    # evaluation is fixed too.
    torch.testing.assert_close(returns[0], returns[2], rtol=0, atol=0)
    # The training stream is another one: it depends on the seed.
    assert not torch.equal(train[0][0], train[2][0])
    return fixed, torch.cat(train[0] + train[2])


NAVIGATION = {"experiment": "navigation"}


def test_navigation_evaluation_goals_are_fixed_and_never_training_goals(monkeypatch):
    fixed, training = check_metarl(monkeypatch, "navigation")
    assert fixed.shape == (8, 2) and training.shape == (16, 2)
    assert apart(fixed, training)
    # nor any goal of the first 20 meta-batches of other seeds' streams
    for seed in range(5):
        g = make_generator(seed, "tasks")
        stream = torch.cat(
            [metarl.sample_task_goals(NAVIGATION, 20, g) for _ in range(20)]
        )
        assert apart(fixed, stream, whole_tasks=True)


@pytest.mark.parametrize("experiment", ["half_cheetah-velocity", "ant-velocity"])
def test_locomotion_evaluation_velocities_are_fixed_and_never_training_ones(
    monkeypatch, experiment
):
    pytest.importorskip("gymnasium")
    pytest.importorskip("mujoco")
    fixed, training = check_metarl(monkeypatch, experiment)
    assert fixed.shape == (8,) and training.shape == (16,)
    assert apart(fixed[:, None], training[:, None])


@pytest.mark.parametrize("robot", ["half_cheetah", "ant"])
def test_locomotion_evaluation_directions_are_fixed_and_cover_both(robot):
    """Forward/backward has two tasks only: the evaluation cannot avoid the training
    tasks, but it is the same fixed set for every seed, and it holds both."""
    config = make_config(f"{robot}-direction", "ci", seed=0)
    n = config["n_eval_tasks"]
    fixed = metarl.evaluation_goals(n, config=config)
    assert torch.equal(fixed, metarl.evaluation_goals(n, config=config))
    other_seed = make_config(f"{robot}-direction", "ci", seed=9)
    assert torch.equal(fixed, metarl.evaluation_goals(n, config=other_seed))
    assert set(fixed.tolist()) == {-1.0, 1.0}


# ------------------------------------------------------------------------------------
# Few-shot classification
# ------------------------------------------------------------------------------------


class RecordingSampler:
    """An episode sampler that logs every meta-batch it hands out."""

    def __init__(self, sampler, log, split):
        self.sampler, self.log, self.split = sampler, log, split

    def sample(self, *args, **kwargs):
        episodes = self.sampler.sample(*args, **kwargs)
        self.log.append((self.split, episodes))
        return episodes

    def __getattr__(self, name):
        return getattr(self.sampler, name)


def draws(log, split):
    return [e for s, e in log if s == split]


def assert_same_episodes(a, b):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert torch.equal(x.classes, y.classes)
        assert torch.equal(x.examples, y.examples)
        assert torch.equal(x.x_support, y.x_support)
        assert torch.equal(x.x_query, y.x_query)


@pytest.fixture(scope="module")
def standin_omniglot():
    """1623 characters x 20 drawings whose pixels spell the character's index: the
    low byte around the edge, the high byte (+1) in the centre, both unchanged by the
    quarter turns that make Omniglot's rotated classes."""
    n = om.N_CHARACTERS
    ids = torch.arange(n)
    images = (ids % 256).to(torch.uint8)[:, None, None, None].repeat(1, 20, 28, 28)
    images[:, :, 7:21, 7:21] = (ids // 256 + 1).to(torch.uint8)[:, None, None, None]
    names = [f"character{i:04d}" for i in range(n)]
    return om.Omniglot(images, ["stand-in"] * n, names, torch.ones(n, dtype=torch.bool))


def characters_in(episodes) -> torch.Tensor:
    """The character behind every image of the episodes, read from its pixels."""
    x = torch.cat([episodes.x_support, episodes.x_query], dim=1)  # [T, n, 1, 28, 28]
    low = (x[:, :, 0, 0, 0] * 255).round().long()
    high = (x[:, :, 0, 14, 14] * 255).round().long() - 1
    return (high * 256 + low).flatten()


def test_omniglot_splits_are_disjoint_and_fixed():
    paper = om.split_characters("paper")
    original = om.split_characters("original")
    assert set(paper) == {"train", "test"} and set(original) == {"train", "val", "test"}
    for splits in (paper, original):
        sets = {k: set(v.tolist()) for k, v in splits.items()}
        assert sum(len(s) for s in sets.values()) == om.N_CHARACTERS
        assert set.union(*sets.values()) == set(range(om.N_CHARACTERS))
        for a in sets:
            for b in sets:
                assert a == b or not sets[a] & sets[b], (a, b)
    # The same test characters in both schemes, and the same on every call.
    assert torch.equal(paper["test"], original["test"])
    assert torch.equal(paper["test"], om.split_characters("paper")["test"])
    assert (len(paper["train"]), len(paper["test"])) == (1200, 423)


def omniglot_run(samplers, tmp_path, seed, n_iterations):
    config = make_config(
        "omniglot-5way-1shot",
        "ci",
        seed=seed,
        n_iterations=n_iterations,
        meta_batch_size=2,
        n_filters=4,
        n_eval_tasks=6,
        n_eval_steps=1,
        n_test_inner_steps=1,
        checkpoint_every=1,
        log_every=1,
    )
    log = []
    recording = {s: RecordingSampler(v, log, s) for s, v in samplers.items()}
    run = RunFolder(run_name(config), "ci", seed, root=tmp_path)
    metrics = fewshot.train_and_evaluate(config, run, samplers=recording)
    assert metrics["test_accuracy"]["n"] == 6
    return log


def test_omniglot_evaluation_episodes_are_fixed_and_from_the_test_characters(
    standin_omniglot, tmp_path
):
    samplers = {
        split: om.tasks_for_split(standin_omniglot, split)
        for split in ("train", "test")
    }
    first = omniglot_run(samplers, tmp_path / "a", seed=0, n_iterations=3)
    second = omniglot_run(samplers, tmp_path / "b", seed=1, n_iterations=1)
    splits = om.split_characters("paper")
    train_chars, test_chars = (
        set(splits["train"].tolist()),
        set(splits["test"].tolist()),
    )
    for log, n_iterations in ((first, 3), (second, 1)):
        assert len(draws(log, "train")) == n_iterations
        assert sum(len(e) for e in draws(log, "test")) == 6
        # Evaluation only after training: nothing trains on a test draw.
        splits_in_order = [s for s, _ in log]
        assert splits_in_order == sorted(splits_in_order, key=["train", "test"].index)
        for split, allowed in (("train", train_chars), ("test", test_chars)):
            for episodes in draws(log, split):
                seen = characters_in(episodes)
                assert set(seen.tolist()) <= allowed, split
                # the sampler's own bookkeeping agrees with the pixels
                sources = samplers[split].source_of(episodes.classes)
                k, q = episodes.x_support.shape[1], episodes.x_query.shape[1]
                per_class = (k + q) // sources.shape[1]
                expected = sources.repeat_interleave(per_class, dim=1)
                assert sorted(seen.tolist()) == sorted(expected.flatten().tolist())
    assert_same_episodes(draws(first, "test"), draws(second, "test"))
    # while the training episodes follow the seed
    assert not torch.equal(
        draws(first, "train")[0].classes, draws(second, "train")[0].classes
    )


def csv_labels(split: str) -> set[str]:
    with open(DATA_ROOT / "miniimagenet" / "splits" / f"{split}.csv") as f:
        return {row["label"] for row in csv.DictReader(f)}


def miniimagenet_run(samplers, tmp_path, seed, n_iterations):
    config = make_config(
        "miniimagenet-5way-1shot",
        "ci",
        seed=seed,
        n_iterations=n_iterations,
        meta_batch_size=1,
        n_query=1,
        n_eval_query=1,
        n_filters=2,
        images_per_class=5,
        n_val_tasks=2,
        n_eval_tasks=2,
        n_eval_steps=1,
        n_test_inner_steps=1,
        checkpoint_every=1,
        log_every=1,
    )
    log = []
    recording = {s: RecordingSampler(v, log, s) for s, v in samplers.items()}
    run = RunFolder(run_name(config), "ci", seed, root=tmp_path)
    metrics = fewshot.train_and_evaluate(config, run, samplers=recording)
    assert metrics["test_accuracy"]["n"] == 2
    return log


@needs_miniimagenet
def test_miniimagenet_evaluation_episodes_are_fixed_and_from_the_test_classes(
    load_miniimagenet_subset, tmp_path
):
    from mamllib.data.miniimagenet import tasks_for_split

    data = {s: load_miniimagenet_subset(s, 5) for s in ("train", "val", "test")}
    labels = {s: csv_labels(s) for s in data}
    # The split files: disjoint classes, and the loaded splits are theirs.
    assert not labels["test"] & (labels["train"] | labels["val"])
    assert not labels["train"] & labels["val"]
    for s in data:
        assert set(data[s].classes) == labels[s]
    samplers = {s: tasks_for_split(d) for s, d in data.items()}
    first = miniimagenet_run(samplers, tmp_path / "a", seed=0, n_iterations=2)
    second = miniimagenet_run(samplers, tmp_path / "b", seed=1, n_iterations=1)
    for log, n_iterations in ((first, 2), (second, 1)):
        assert len(draws(log, "train")) == n_iterations
        # checkpoint selection: the same validation tasks at every checkpoint
        val = draws(log, "val")
        assert len(val) == n_iterations
        for episodes in val[1:]:
            assert_same_episodes([episodes], val[:1])
        assert sum(len(e) for e in draws(log, "test")) == 2
        for split, episodes_list in (
            ("train", draws(log, "train")),
            ("val", val),
            ("test", draws(log, "test")),
        ):
            for episodes in episodes_list:
                wnids = {data[split].classes[c] for c in episodes.classes.flatten()}
                assert wnids <= labels[split], split
                # the pixels are that split's images of those classes
                c = episodes.classes[0].numpy()
                e = episodes.examples[0].numpy()
                pixels = data[split].images[c[:, None], e[:, :1]]  # support: first
                expected = torch.from_numpy(np.ascontiguousarray(pixels)).float() / 255
                expected = expected.permute(0, 1, 4, 2, 3).flatten(0, 1)
                assert torch.equal(episodes.x_support[0], expected)
    assert_same_episodes(draws(first, "test"), draws(second, "test"))
    assert_same_episodes(draws(first, "val")[:1], draws(second, "val")[:1])
