"""`coroseg evaluate`: predict on labelled frames, then score each against its expert mask."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from coroseg.config import TrainConfig
from coroseg.data.dataset import frames_digest
from coroseg.data.pairs import announce, checked_scan, read_pair
from coroseg.evaluation.metrics import image_metrics, mean_metrics
from coroseg.inference.predict import InferenceOptions, InferenceSession, check_output, load_options_model
from coroseg.tracking import layout
from coroseg.tracking.base import DatasetRef, run_status
from coroseg.tracking.record import markdown_rows, markdown_table, new_record_dir, to_csv

log = logging.getLogger("coroseg")


@dataclass
class EvaluationOutcome:
    run_id: str | None
    tracking_failed: bool
    means: dict[str, float]
    output: Path


WORST_SHOWN = 5


def _worst(rows: list[dict]) -> list[dict]:
    """The images with the lowest Dice, each with the path of its overlay in this run."""
    ranked = sorted(rows, key=lambda r: r["dice"])[:WORST_SHOWN]
    return [{"image": r["image"], "dice": r["dice"],
             "comparison": f"{layout.artifact_dir('comparisons')}/{r['image']}.png"} for r in ranked]


def _summary_markdown(means: dict[str, float], images: int, worst: list[dict]) -> str:
    rows = [{**w, "overlay": f"[{w['comparison']}](../../{w['comparison']})"} for w in worst]
    return ("# Evaluation\n\n" + markdown_table({**means, "images": images})
            + f"\n## The {len(worst)} worst images by Dice\n\n" + markdown_rows(rows, ["image", "dice", "overlay"]))


def run_evaluation(options: InferenceOptions, data: str, data_format: str = "auto",
                   mask_classes: str | None = None) -> EvaluationOutcome:
    scan = checked_scan(data, data_format, mask_classes)                   # bad input: error before the run or the output
    pairs = scan.pairs
    # Every pair decoded once up front (corrupt files, non-binary masks, sizes), and the data's digest.
    digest = frames_digest(read_pair(pair) for pair in pairs)
    dataset = DatasetRef(Path(scan.folder).name or "data", digest[:16])
    model = load_options_model(options)
    announce(scan)
    if options.output:
        output = Path(options.output)
        check_output(output, options.overwrite)
    else:
        output = new_record_dir(TrainConfig().output_dir, "evaluate")
    session = InferenceSession(options, model, output, layout.EVALUATION_TAGS,
                               f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}")
    with run_status(session.close):
        session.log_params([p.image for p in pairs], {"data": str(data)})
        session.tracker.log_dataset(dataset, "evaluation", str(Path(scan.folder).resolve()),
                                    {"frames": len(pairs), "format": scan.format})
        results = session.run([p.image for p in pairs], [p.mask for p in pairs], measure=image_metrics)
        rows = [{"image": r.name, **r.scores} for r in results]
        means = mean_metrics(rows)
        session.tracker.log_metrics(means, model_id=model.model_id, dataset=dataset)   # on the model's page too
        session.record.write_text("per_image_metrics", "metrics.csv", to_csv(rows))
        worst = _worst(rows)
        session.record.write_json("evaluation_summary", "summary.json",
                                  {"means": means, "images": len(rows), "worst_by_dice": worst})
        session.record.write_text("evaluation_summary", "summary.md", _summary_markdown(means, len(rows), worst))
        session.finish(results, {"means": means})
    log.info("evaluated %d images: %s", len(rows), "  ".join(f"{k} {v:.4f}" for k, v in means.items()))
    return EvaluationOutcome(session.tracker.run_id, session.tracker.failed, means, output)
