"""The admin's fine-tune: datasets from feedback (and curated files) frozen as verifiable snapshots, and
the evaluation gate that decides whether a challenger adapter may replace the champion.

Imports models and memory, never agents or serving."""

from tools.finetune.curated import (
    CuratedDataset,
    DatasetExists,
    UnknownDataset,
    add_curated,
    curated_rows,
    find_curated,
    list_curated,
    register_curated,
    validate_curated,
)
from tools.finetune.dataset import (
    DatasetError,
    DatasetRow,
    Manifest,
    Snapshot,
    load_snapshot,
    split_of,
    verify_snapshot,
    write_snapshot,
)
from tools.finetune.feedback import rating_desirable, read_sections, rows_from_feedback, snapshot_from_records
from tools.finetune.gate import GateCheck, GateConfig, GateReport, run_gate
from tools.finetune.vqa import RegressionSet, VqaItem, freeze_regression_set, load_regression_set

__all__ = [
    "CuratedDataset",
    "DatasetError",
    "DatasetExists",
    "DatasetRow",
    "GateCheck",
    "GateConfig",
    "GateReport",
    "Manifest",
    "RegressionSet",
    "Snapshot",
    "UnknownDataset",
    "VqaItem",
    "add_curated",
    "curated_rows",
    "find_curated",
    "freeze_regression_set",
    "list_curated",
    "load_regression_set",
    "load_snapshot",
    "rating_desirable",
    "read_sections",
    "register_curated",
    "rows_from_feedback",
    "run_gate",
    "snapshot_from_records",
    "split_of",
    "validate_curated",
    "verify_snapshot",
    "write_snapshot",
]
