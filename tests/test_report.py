"""The reproduction and settings pages' readers in ``mamllib.report`` and the figure of
``mamllib.plot.plot_reproduction``, on artifacts written here (the committed ones
change as runs go on) and on the presets.

The status of an artifact is :func:`mamllib.paper.run_status` of the iterations its
``metrics.json`` records against the paper preset's, whatever text the artifact stored.
"""

import json

import matplotlib
import pytest

from mamllib import paper, plot, report
from mamllib.report import (
    artifact_status,
    command_parts,
    format_interval,
    not_reproduced,
    ours_cell,
    provenance,
    read_artifacts,
    reproduction_panels,
    reproduction_rows,
    reproduction_table,
    schedule_reached,
    settings_table,
    split_quantity,
)

matplotlib.use("Agg")


def write_artifact(root, name, config, metrics, rows, manifest=None):
    folder = root / "artifacts" / name
    folder.mkdir(parents=True)
    files = {
        "config.json": {"preset": "paper", "seed": 0, **config},
        "metrics.json": metrics,
        "reproduction.json": rows,
        "manifest.json": manifest or {"command": "python -m mamllib train x"},
    }
    for file, content in files.items():
        (folder / file).write_text(json.dumps(content))


def fewshot_row(experiment, quantity, paper_value, ci, ours, ours_ci):
    return report.row(
        experiment,
        quantity,
        paper_value,
        "Table 1",
        ours,
        ours_ci,
        "stored text",
        False,
        ci,
    )


@pytest.fixture
def root(tmp_path):
    """Three artifacts: a complete Omniglot run, a partial first-order MiniImageNet
    run, and a navigation curve whose baselines were not trained to the end."""
    write_artifact(
        tmp_path,
        "omniglot-5way-1shot-paper",
        {"experiment": "omniglot-5way-1shot", "n_eval_tasks": 600},
        {"status": "complete", "iterations": 60_000},
        [
            fewshot_row(
                "Omniglot 5-way 1-shot",
                "MAML test accuracy (%), 3 steps",
                98.7,
                0.4,
                99.333,
                0.329,
            )
        ],
        {
            "command": "train a (at 1a2b; then b); then c --note 'x; y'",
            "note": "x; y",
            "device": "CPU: x86_64, 2 cores",
            "training_wall_time_s": 32837.4,
            "evaluation_wall_time_s": 26.2,
            "commit": "e25b0239c769cf1c824c4b08718e1e420ff33d3da",
        },
    )
    write_artifact(
        tmp_path,
        "miniimagenet-5way-1shot-first-order-paper-partial",
        # The run's own n_iterations (300) is not the target: the paper preset's is.
        {
            "experiment": "miniimagenet-5way-1shot",
            "first_order": True,
            "n_iterations": 300,
            "n_eval_tasks": 600,
        },
        {
            "status": "an older wording",
            "iterations": 300,
            "test_accuracy": {"mean": 0.294333, "ci95": 0.016587, "n": 600},
        },
        [
            fewshot_row(
                "MiniImageNet 5-way 1-shot",
                "first-order MAML test accuracy (%), 10 steps",
                48.07,
                1.75,
                29.4333,
                1.6587,
            )
        ],
    )
    nav = [
        report.row(
            "2D navigation (point mass)",
            f"MAML: average return after {s} step{'s' * (s != 1)}",
            value,
            "App. C",
            value + 1,
            0.5,
            "stored text",
        )
        for s, value in enumerate(paper.APPENDIX_C["navigation"][1])
    ]
    write_artifact(
        tmp_path,
        "navigation-paper",
        {"experiment": "navigation", "n_eval_tasks": 100},
        {"status": "complete", "iterations": {"maml": 500, "pretrained": 132}},
        nav,
    )
    return tmp_path


def test_artifacts_come_in_the_papers_order(root):
    names = [a["name"] for a in read_artifacts(root)]
    # Table 1 (its own order: Omniglot before MiniImageNet), then App. C
    assert names == [
        "omniglot-5way-1shot-paper",
        "miniimagenet-5way-1shot-first-order-paper-partial",
        "navigation-paper",
    ]


def test_status_is_run_status_of_what_the_artifact_reached(root):
    omniglot, mini, nav = read_artifacts(root)
    assert artifact_status(omniglot) == "complete"
    # 300 of the paper preset's 60,000, not of the run's own n_iterations (300)
    assert (
        artifact_status(mini) == "partial: paper preset, 300 of 60,000 meta-iterations"
    )
    assert schedule_reached(mini) == "300 / 60,000"
    # every method counts: MAML reached 500 but the pretrained baseline 132, and a
    # meta-RL run must train the oracle too, which this one did not
    assert artifact_status(nav) == (
        "partial: paper preset, maml 500 of 500, pretrained 132 of 500, oracle 0 of "
        "500 meta-iterations"
    )
    assert schedule_reached(nav) == (
        "maml 500 / 500, pretrained 132 / 500, oracle 0 / 500"
    )


def test_a_meta_rl_run_without_its_baselines_is_partial(tmp_path):
    write_artifact(
        tmp_path,
        "half_cheetah-direction-paper",
        {"experiment": "half_cheetah-direction", "preset": "paper"},
        {"status": "complete", "iterations": {"maml": 500}},
        [],
    )
    (artifact,) = read_artifacts(tmp_path)
    assert artifact_status(artifact) == (
        "partial: paper preset, maml 500 of 500, pretrained 0 of 500, oracle 0 of "
        "500 meta-iterations"
    )


def test_a_run_below_the_paper_preset_is_partial_even_at_full_length(tmp_path):
    write_artifact(
        tmp_path,
        "omniglot-5way-1shot-paper",
        {"experiment": "omniglot-5way-1shot", "preset": "book", "n_eval_tasks": 200},
        {"status": "complete", "iterations": 60_000},
        [],
    )
    (artifact,) = read_artifacts(tmp_path)
    assert artifact_status(artifact) == (
        "partial: book preset, 60,000 of 60,000 meta-iterations"
    )


def test_the_table_puts_the_status_beside_our_number(root):
    rows = reproduction_rows(root)
    assert [r["status"] for r in rows][:2] == [
        "complete",
        "partial: paper preset, 300 of 60,000 meta-iterations",
    ]
    assert ours_cell(rows[0]) == "99.33 ± 0.33"
    assert ours_cell(rows[1]) == "29.43 ± 1.66 (partial, 300 / 60,000)"
    lines = reproduction_table(rows).splitlines()
    assert lines[0] == "| experiment | quantity | paper | ours (95% CI) |"
    assert lines[2] == (
        "| Omniglot 5-way 1-shot (Table 1) | MAML test accuracy (%), 3 steps | "
        "98.7 ± 0.4 | 99.33 ± 0.33 |"
    )
    assert lines[3] == (
        "| MiniImageNet 5-way 1-shot (Table 1) | first-order MAML test accuracy (%), "
        "10 steps | 48.07 ± 1.75 | 29.43 ± 1.66 (partial, 300 / 60,000) |"
    )
    # an experiment's name and source on its first row only
    assert lines[4].startswith("| 2D navigation (point mass) (App. C) | MAML: average")
    assert lines[5].startswith("|  | MAML: average return after 1 step | -11.68 | ")
    assert len(lines) == 2 + 2 + 4


def test_numbers_keep_the_papers_precision():
    assert format_interval(48.7, 1.84) == "48.70 ± 1.84"
    assert format_interval(98.7, 0.4) == "98.7 ± 0.4"
    assert format_interval(-40.41, None) == "-40.41"
    assert format_interval(0.59389, 0.0648, digits=2) == "0.59 ± 0.06"


def test_quantities_split_into_method_measure_and_steps():
    assert split_quantity("MAML: MSE after 1 step") == ("MAML", "MSE", "1 step")
    assert split_quantity("pretrained: average return after 10 steps") == (
        "pretrained",
        "average return",
        "10 steps",
    )
    assert split_quantity("first-order MAML test accuracy (%), 10 steps") == (
        "first-order MAML",
        "test accuracy (%)",
        "10 steps",
    )
    assert split_quantity("something else") == ("something else", "", "")


def test_panels_share_by_data_set_and_give_a_curve_its_own(root):
    panels = reproduction_panels(reproduction_rows(root))
    assert [p["title"] for p in panels] == [
        "Omniglot (Table 1)",
        "MiniImageNet (Table 1)",
        "2D navigation (point mass) (App. C)",
    ]
    assert panels[1]["xlabel"] == "test accuracy (%)"
    assert panels[1]["rows"] == [
        {
            "label": "5-way 1-shot, first order",
            "paper": 48.07,
            "paper_ci95": 1.75,
            "ours": 29.4333,
            "ours_ci95": 1.6587,
            "partial": "300 / 60,000",
        }
    ]
    assert [r["label"] for r in panels[2]["rows"]] == [
        "MAML, 0 steps",
        "MAML, 1 step",
        "MAML, 2 steps",
        "MAML, 3 steps",
    ]
    assert {r["partial"] for r in panels[2]["rows"]} == {
        "maml 500 / 500, pretrained 132 / 500, oracle 0 / 500"
    }
    assert panels[0]["rows"][0]["partial"] is None


def test_the_figure_draws_partial_runs_hollow_and_labels_them(root):
    panels = reproduction_panels(reproduction_rows(root))
    fig = plot.plot_reproduction(panels)
    try:
        # the book's column is about 676 pixels wide
        assert fig.get_figwidth() == 6.8 and fig.get_figwidth() * fig.dpi <= 700
        ax_omniglot, ax_mini, ax_nav = fig.axes
        # ours: filled when complete, hollow (white face) when partial
        faces = [
            line.get_markerfacecolor()
            for line in ax_omniglot.lines + ax_mini.lines
            if line.get_marker() == "o"
        ]
        assert faces == [plot.COLORS["maml"], "white"]
        assert [t.get_text() for t in ax_mini.texts] == ["300 / 60,000"]
        assert len(ax_omniglot.texts) == 0
        assert len(ax_nav.texts) == 4
        labels = [t.get_text() for t in ax_mini.get_yticklabels()]
        assert labels == ["5-way 1-shot, first order"]
    finally:
        matplotlib.pyplot.close(fig)


def test_provenance_lists_hardware_time_iterations_and_the_command(root):
    text = provenance(root)
    block = text.split("\n\n**")[0]
    assert block.splitlines()[:7] == [
        "**`omniglot-5way-1shot-paper`**",
        "",
        "- complete: 60,000 / 60,000 meta-iterations",
        "- hardware: CPU: x86_64, 2 cores",
        "- wall time: training 9 h 7 min, evaluation 26 s",
        "- commit: `e25b0239c769`",
        "- command:",
    ]
    # one part of the command a line; the note, quoted in it, shown as NOTE
    assert block.splitlines()[8:] == [
        "  ```text",
        "  train a (at 1a2b; then b);",
        "  then c --note NOTE",
        "  ```",
    ]
    assert "- partial: 300 / 60,000 meta-iterations" in text
    assert "- hardware: not recorded" in text


def test_command_parts_split_outside_parentheses_and_quotes():
    assert command_parts("a (x; y); b 'p; q'; c") == ["a (x; y);", "b 'p; q';", "c"]
    assert command_parts("python -m mamllib train sinusoid") == [
        "python -m mamllib train sinusoid"
    ]


def test_not_reproduced_lists_what_has_no_artifact(root):
    lines = not_reproduced(root).splitlines()
    # Table 1's rows without an artifact, with the command that runs them
    assert (
        "- `miniimagenet-5way-5shot-first-order` (Table 1): never run at the `paper` "
        "preset; `python -m mamllib train miniimagenet-5way-5shot --first-order "
        "--preset paper`"
    ) in lines
    assert not any("`omniglot-5way-1shot`" in line for line in lines)
    assert not any("`navigation`" in line for line in lines)
    # the sinusoid (Table 2) and Figure 5's locomotion runs have none here
    assert any(line.startswith("- `sinusoid` (App. C.1, Table 2)") for line in lines)
    assert any(line.startswith("- `ant-direction` (Figure 5)") for line in lines)
    # half-cheetah forward/backward is listed once, under App. C
    assert sum("`half_cheetah-direction`" in line for line in lines) == 1
    # rows of methods mamllib does not implement, with the paper's numbers
    assert (
        "- Omniglot 5-way, MAML without convolutions (MLP 256-128-64-64) (Table 1): "
        "89.7 ± 1.1 % (1-shot), 97.5 ± 0.6 % (5-shot); not implemented in mamllib"
    ) in lines
    # 6 of Table 1, the sinusoid, half-cheetah (App. C), 3 more of Figure 5
    assert len(lines) == 6 + 1 + 1 + 3 + len(paper.NOT_IMPLEMENTED)


def test_the_committed_artifacts_read(monkeypatch):
    # Every committed artifact reads, has a status by the one rule and rows in the
    # table, a partial one marked beside each of its numbers.
    rows = reproduction_rows()
    assert rows
    for r in rows:
        assert r["status"] == "complete" or r["status"].startswith("partial: ")
        assert ("(partial, " in ours_cell(r)) == (r["status"] != "complete")


def test_the_settings_table_sets_paper_code_and_ours_side_by_side(monkeypatch):
    monkeypatch.delenv("MAMLLIB_PRESET", raising=False)
    sinusoid = settings_table("sinusoid").splitlines()
    assert sinusoid[0] == "| setting | paper | original code (cbfinn/maml) | ours |"
    inner = next(line for line in sinusoid if "`inner_lr`" in line)
    note = inner.rsplit("(note ", 1)[1].split(")")[0]
    assert inner == (
        "| α, inner step size (`inner_lr`) | 0.01 (§5.1) | 0.001 (main.py update_lr "
        f"default; the usage line does not set it) | 0.01 (note {note}) |"
    )
    assert f"{note}. `inner_lr`: We follow the paper." in sinusoid
    assert sinusoid[-1] == (
        "Bookkeeping, set by neither source: `strategy` compiled, `device` cpu, "
        "`checkpoint_every` 5,000, `log_every` 100, `seed` 0."
    )
    omniglot = settings_table("omniglot")
    assert (
        "| α, inner step size (`inner_lr`) | 5-way: 0.4; 20-way: 0.1 (App. A.1) | "
        "5-way: 0.4; 20-way: 0.1 (main.py usage lines, update_lr) | "
        "5-way: 0.4; 20-way: 0.1 |"
    ) in omniglot
    assert "`strategy` (5-way: vmap; 20-way: threads)" in omniglot
    locomotion = settings_table("locomotion")
    assert "| ant direction: 40; others: 20 (note" in locomotion
    assert "| β, Adam's step size (`outer_lr`) | not stated | 0.001" in settings_table(
        "miniimagenet"
    )
    # every family: one row per hyperparameter of its paper presets
    for family, settings in paper.SETTINGS.items():
        table = settings_table(family)
        assert sum(line.startswith("| ") for line in table.splitlines()) == (
            1 + len(settings)
        )


def test_table1_gives_each_artifact_its_status_by_the_one_rule(root):
    table, found = report.table1("miniimagenet", root)
    # the artifact stored "an older wording"; the table shows run_status's
    assert (
        "| miniimagenet-5way-1shot-first-order | 48.07 ± 1.75 | 29.43 ± 1.66 "
        "(600 tasks) | partial: paper preset, 300 of 60,000 meta-iterations |"
    ) in table.splitlines()
    assert found["miniimagenet-5way-1shot"] is None


def test_further_seeds_are_kept_out_of_the_tables_and_spread_across_seeds(root):
    values = {0: 98.7, 1: 97.1, 2: 99.0}
    for seed, ours in values.items():
        if seed:
            write_artifact(
                root,
                f"omniglot-5way-1shot-seed-{seed}-paper",
                {"experiment": "omniglot-5way-1shot", "seed": seed},
                {"status": "complete", "iterations": 60_000},
                [
                    fewshot_row(
                        "Omniglot 5-way 1-shot",
                        "MAML test accuracy (%), 3 steps",
                        98.7,
                        0.4,
                        ours,
                        0.3,
                    )
                ],
            )
    # the tables (and find_artifact) still show seed 0 only
    assert [a["name"] for a in read_artifacts(root)][0] == "omniglot-5way-1shot-paper"
    assert len(read_artifacts(root)) == 3
    assert len(read_artifacts(root, every_seed=True)) == 5
    assert report.find_artifact("omniglot-5way-1shot", root)["config"]["seed"] == 0
    ours_seed0 = reproduction_rows(root)[0]["ours"]
    values[0] = ours_seed0
    table = report.seed_spread(root)
    (line,) = [x for x in table.splitlines() if "seeds 0, 1, 2" in x]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3] == ", ".join(f"{values[s]:.2f}" for s in (0, 1, 2))
    mean = sum(values.values()) / 3
    sd = (sum((v - mean) ** 2 for v in values.values()) / 2) ** 0.5
    assert cells[4] == f"{mean:.2f} ± {sd:.2f}"
    # the runs with one seed get no row
    assert "navigation" not in table.lower() and table.count("\n") == 2


def test_no_spread_without_a_second_seed(root):
    assert report.seed_spread(root).startswith("No run has been trained")
