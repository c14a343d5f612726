"""Results, written and read: one writer, the readers chapters use, the book's pages.

    writer        the one writer of a run's metrics, history, weights and reproduction
                  rows, and of the committed artifacts made from runs (with a manifest)
    artifacts     readers of committed artifacts and benchmark results, and an
                  artifact's status (:func:`mamllib.paper.run_status`, the one rule)
    reproduction  the reproduction page: paper vs ours, never attempted, provenance
    settings      the settings page: the paper's, the original code's and our values

Everything is importable from here (``from mamllib import report``).
"""

from mamllib.report.artifacts import (
    MANIFEST_KEYS,
    TARGET_KEYS,
    artifact_status,
    describe_manifest,
    find_artifact,
    format_interval,
    iteration_targets,
    iterations_reached,
    read_artifact,
    read_artifacts,
    read_benchmark,
    run_of,
    schedule_reached,
    steps_table,
    table1,
)
from mamllib.report.reproduction import (
    command_parts,
    not_reproduced,
    ours_cell,
    provenance,
    reproduction_panels,
    reproduction_rows,
    reproduction_table,
    seed_spread,
    split_quantity,
)
from mamllib.report.settings import (
    SETTING_LABELS,
    format_setting,
    format_variants,
    settings_table,
)
from mamllib.report.writer import (
    ARTIFACT_PATTERNS,
    CHECKPOINT_PATTERNS,
    ROW_FIELDS,
    make_artifact,
    row,
    write_results,
)
from mamllib.runs import read_json

__all__ = [
    "ARTIFACT_PATTERNS",
    "CHECKPOINT_PATTERNS",
    "MANIFEST_KEYS",
    "ROW_FIELDS",
    "SETTING_LABELS",
    "TARGET_KEYS",
    "artifact_status",
    "command_parts",
    "describe_manifest",
    "find_artifact",
    "format_interval",
    "format_setting",
    "format_variants",
    "iteration_targets",
    "iterations_reached",
    "make_artifact",
    "not_reproduced",
    "ours_cell",
    "provenance",
    "seed_spread",
    "read_artifact",
    "read_artifacts",
    "read_benchmark",
    "reproduction_panels",
    "reproduction_rows",
    "reproduction_table",
    "row",
    "run_of",
    "schedule_reached",
    "settings_table",
    "split_quantity",
    "steps_table",
    "table1",
    "write_results",
    "read_json",
]
