"""The artifact layout: the one module that knows where each artifact goes.

Both the MLflow run and the local record use these paths, so a run reads the same in the UI and on disk.
The layout is a contract (see DESIGN.md): tests check every path named here.
"""

from __future__ import annotations

MODEL_NAME = "pytorch_model"  # loadable as runs:/<run_id>/pytorch_model

# category -> artifact folder; "{epoch}" is replaced by epoch_XXX (1-based, zero-padded to 3)
TRAINING = {
    "log": "logs/training",
    "epoch_log": "logs/{epoch}",
    "config": "config/training",
    "epoch_config": "config/{epoch}",
    "epoch_metrics": "metrics/{epoch}",
    "summary": "summaries/training",
    "epoch_summary": "summaries/{epoch}",
    "epoch_predictions": "predictions/{epoch}",
    "curves": "visualizations/training_curves/{epoch}",
    "best_weights": "checkpoints/best_model/{epoch}",
    "best_metadata": "checkpoints/best_model/metadata",
    "best_context": "checkpoints/best_model/context",
    "final_weights": "final_model/weights",
    "final_config": "final_model/configuration",
    "final_history": "final_model/training_history",
    "final_summary": "final_model/summary",
}

INFERENCE = {
    "comparisons": "predictions/comparisons",
    "inputs": "predictions/inputs",
    "outputs": "predictions/outputs",
    "metadata": "predictions/metadata",
    "inference_summary": "inference/summary",
    # evaluate runs add these beside the inference layout
    "per_image_metrics": "evaluation/per_image",
    "evaluation_summary": "evaluation/summary",
}

CATEGORIES = {**TRAINING, **INFERENCE}

TRAINING_TAGS = {
    "task": "coronary_segmentation",
    "enhanced_features": "enabled",
    "artifact_structure": "hierarchical",
}
TRAINING_PARAMS = {"enhanced_logging_enabled": True, "artifact_organization": "hierarchical"}
INFERENCE_TAGS = {"task": "inference", "mode": "prediction"}
EVALUATION_TAGS = {"task": "evaluation", "mode": "evaluation"}

WEIGHTS_FILE = "model.safetensors"


def epoch_folder(epoch: int) -> str:
    return f"epoch_{epoch:03d}"


def artifact_dir(category: str, epoch: int | None = None) -> str:
    template = CATEGORIES[category]
    if "{epoch}" in template:
        if epoch is None:
            raise ValueError(f"artifact category {category!r} needs an epoch")
        return template.format(epoch=epoch_folder(epoch))
    return template

# Local record only (never uploaded): the full state after the last finished epoch, for `train --resume`.
RESUME_STATE_DIR = ".coroseg/last_epoch"

# Local record only: the journal of every tracker call (written before anything is sent), which of its
# entries reached which MLflow run, and the record's run id and status. `coroseg sync` reads these.
JOURNAL_FILE = ".coroseg/journal.jsonl"
SENT_FILE = ".coroseg/sent.jsonl"
RECORD_FILE = ".coroseg/record.json"
EARLIER_JOURNALS = ".coroseg/earlier"   # journals of earlier runs written into the same folder (--overwrite)
RECORD_LOCK = ".coroseg/lock"       # held by the process that writes the record; sync leaves it alone then


def fold_record_dir(record_dir, fold: int):
    """The local record of cross-validation fold `fold` (1-based), inside its parent's record."""
    return record_dir / f"fold_{fold}"
