"""A short training run, asserted through MlflowClient against the layout of DESIGN.md."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from coroseg.tracking import layout
from tests.conftest import EPOCHS

PER_EPOCH = ["logs/{e}", "config/{e}", "metrics/{e}", "summaries/{e}", "predictions/{e}",
             "visualizations/training_curves/{e}"]
ONCE = ["logs/training", "config/training", "summaries/training", "checkpoints/best_model/metadata",
        "checkpoints/best_model/context", "final_model/weights", "final_model/configuration",
        "final_model/training_history", "final_model/summary"]
EPOCH_METRICS = ["train_loss", "val_loss", "val_dice", "learning_rate", "epoch_duration_seconds",
                 "train_images_per_second"]


def all_artifacts(client, run_id: str, path: str | None = None, stepped_images: bool = False) -> set[str]:
    """The run's artifact paths; without MLflow's own `images/` folder (log_image's stepped pictures, outside
    the layout) unless asked."""
    found = set()
    for item in client.list_artifacts(run_id, path):
        if item.path == "images" and not stepped_images:
            continue
        found |= all_artifacts(client, run_id, item.path, stepped_images) if item.is_dir else {item.path}
    return found


def test_epoch_overlays_are_stepped_images_for_the_ui_slider(client, trained):
    from coroseg.tracking.journal import Journal

    images = [p for p in all_artifacts(client, trained.run_id, "images", True) if p.endswith(".png")]
    steps: dict[str, set[int]] = {}
    for path in images:                         # images/<key>+step+<n>+timestamp+...png, as MLflow names them
        key, _, step = path.removeprefix("images/").split("+")[:3]
        steps.setdefault(key, set()).add(int(step))
    overlays = [e for e in Journal(trained.record_dir).entries() if e["kind"] == "image"]
    assert len(images) == len(overlays) > 0
    assert all(found == set(range(1, EPOCHS + 1)) for found in steps.values()), steps
    for key in steps:                            # each is the layout's overlay PNG of that epoch
        assert (trained.record_dir / f"predictions/epoch_001/{key.removeprefix('overlay_')}.png").is_file()


@pytest.fixture()
def artifacts(client, trained) -> set[str]:
    return all_artifacts(client, trained.run_id)


def test_every_layout_folder_holds_files_for_every_epoch(artifacts):
    folders = {a.rsplit("/", 1)[0] for a in artifacts}
    for epoch in range(1, EPOCHS + 1):
        for template in PER_EPOCH:
            assert template.format(e=f"epoch_{epoch:03d}") in folders, template
    for folder in ONCE:
        assert folder in folders, folder
    assert any(f.startswith("checkpoints/best_model/epoch_") for f in folders)
    assert "summaries/training/summary.md" in artifacts and "summaries/training/summary.json" in artifacts
    assert "final_model/training_history/history.csv" in artifacts
    assert f"visualizations/training_curves/epoch_{EPOCHS:03d}/training_curves.png" in artifacts


def test_nothing_is_logged_outside_the_layout(artifacts):
    allowed = set(layout.TRAINING.values())
    for path in artifacts:
        folder = path.rsplit("/", 1)[0]
        generic = folder.replace(folder.split("/")[-1], "{epoch}") if "epoch_" in folder else folder
        assert folder in allowed or generic in allowed, path


def test_metric_histories_have_one_value_per_epoch_at_steps_1_to_n(client, trained):
    for name in EPOCH_METRICS:
        history = client.get_metric_history(trained.run_id, name)
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), name
    run = client.get_run(trained.run_id)
    assert any(name.startswith("system/cpu_utilization") for name in run.data.metrics), "log_system_metrics"
    best = max(m.value for m in client.get_metric_history(trained.run_id, "val_dice"))
    assert run.data.metrics["best_val_dice"] == pytest.approx(best)
    assert run.data.metrics["training_duration_seconds"] > 0
    for name in ("val_cldice", "val_hd95"):                 # vessel metrics of each epoch's validation
        history = client.get_metric_history(trained.run_id, name)
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), name
    assert run.data.metrics["chosen_threshold"] in [round(0.3 + 0.05 * i, 2) for i in range(9)]
    assert run.data.metrics["val_dice_postprocessed"] >= run.data.metrics["best_val_dice"] - 1e-3


def test_params_and_tags(client, trained, small_config):
    run = client.get_run(trained.run_id)
    params, tags = run.data.params, run.data.tags
    assert params["model_family"] == "unet"
    assert params["enhanced_logging_enabled"] == "True"
    assert params["artifact_organization"] == "hierarchical"
    assert params["epochs"] == str(EPOCHS) and params["image_size"] == "64"   # flag and YAML both resolved
    for key in ("env_python_version", "env_torch_version", "env_monai_version", "env_mlflow_version",
                "env_device_name", "env_cpu_count", "env_memory_gb", "env_hostname"):
        assert key in params, key
    assert tags["task"] == "coronary_segmentation"
    assert tags["enhanced_features"] == "enabled"
    assert tags["artifact_structure"] == "hierarchical"
    assert run.info.run_name == "fixture-run"
    assert run.info.status == "FINISHED"


def test_best_checkpoint_metadata_matches_val_dice_history(client, trained, artifacts):
    history = sorted(client.get_metric_history(trained.run_id, "val_dice"), key=lambda m: m.step)
    best = max(history, key=lambda m: m.value)
    meta = json.loads(open(client.download_artifacts(trained.run_id, "checkpoints/best_model/metadata/best_model.json")).read())
    assert meta["epoch"] == best.step
    assert meta["val_dice"] == pytest.approx(best.value)
    # a checkpoint for each improvement, and only then
    improving, top = [], -1.0
    for m in history:
        if m.value > top:
            improving.append(m.step)
            top = m.value
    saved = sorted(int(p.split("/")[2][len("epoch_"):]) for p in artifacts if p.startswith("checkpoints/best_model/epoch_"))
    assert saved == improving
    import hashlib

    weights = open(client.download_artifacts(trained.run_id, meta["weights"]), "rb").read()
    assert hashlib.sha256(weights).hexdigest() == meta["sha256"]
    context = json.loads(open(client.download_artifacts(trained.run_id, "checkpoints/best_model/context/context.json")).read())
    assert {"config", "data", "environment", "optimizer"} <= set(context)
    assert len(context["data"]["digest_sha256"]) == 64


def test_epoch_config_snapshot_holds_the_learning_rate(client, trained):
    path = client.download_artifacts(trained.run_id, "config/epoch_002/config.yaml")
    snapshot = yaml.safe_load(open(path))
    lr = [m for m in client.get_metric_history(trained.run_id, "learning_rate") if m.step == 2][0].value
    assert snapshot["epoch"] == 2 and snapshot["current_learning_rate"] == pytest.approx(lr)


def test_logged_model_loads_in_one_line_and_takes_raw_frames_of_any_batch_and_size(trained):
    import mlflow

    mlflow.set_tracking_uri(trained.store)
    model = mlflow.pyfunc.load_model(f"runs:/{trained.run_id}/pytorch_model")
    rng = np.random.default_rng(0)
    for shape, dtype in [((1, 64, 64), np.uint8), ((3, 1, 50, 77), np.uint16), ((2, 40, 48), np.float32)]:
        frames = (rng.random(shape) * (255 if dtype == np.uint8 else 4095)).astype(dtype)
        masks = np.asarray(model.predict(frames))
        assert masks.shape == shape and masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
        probabilities = np.asarray(model.predict(frames, params={"output": "probability"}))
        assert probabilities.shape == shape and 0.0 <= probabilities.min() and probabilities.max() <= 1.0
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = rng.integers(0, 255, (64, 64), np.uint8), rng.integers(0, 255, (40, 90), np.uint8)
    assert [m.shape for m in model.predict(ragged)] == [(64, 64), (40, 90)]
    assert [p.name for p in model.metadata.get_params_schema().params] == ["output"]
    example = np.asarray(json.loads(open(mlflow.artifacts.download_artifacts(
        f"runs:/{trained.run_id}/pytorch_model/input_example.json")).read()))
    assert example.ndim == 3 and example.shape[0] == 1 and example.max() <= 255   # a real frame, as read
    # the post-processing chosen on validation travels with the model
    metadata = mlflow.models.get_model_info(f"runs:/{trained.run_id}/pytorch_model").metadata
    run = mlflow.MlflowClient(tracking_uri=trained.store).get_run(trained.run_id)
    assert metadata["threshold"] == pytest.approx(run.data.metrics["chosen_threshold"])
    assert metadata["min_component_fraction"] == pytest.approx(run.data.metrics["chosen_min_component_fraction"])


def test_weights_load_without_pickle_and_match_the_logged_model(trained):
    import mlflow
    import torch

    from coroseg.inference.model_loading import load_model
    from coroseg.models import build_model
    from coroseg.training.checkpoint import load_weights

    mlflow.set_tracking_uri(trained.store)
    weights = trained.record_dir / "final_model/weights/model.safetensors"
    model = load_weights(weights, build_model("unet")).eval()
    logged = load_model(f"runs:/{trained.run_id}/pytorch_model", torch.device("cpu"), trained.store).module
    x = torch.rand(2, 1, 64, 64)
    assert torch.allclose(model(x), logged(x), atol=1e-5)


def test_local_record_mirrors_the_run(client, trained, artifacts):
    local = {str(p.relative_to(trained.record_dir)) for p in trained.record_dir.rglob("*") if p.is_file()}
    assert artifacts <= local
    assert not [p for p in local if p.endswith(".tmp")]


def test_last_stdout_line_is_the_run_id(trained):
    assert trained.result.stdout.strip().splitlines()[-1] == f"run_id: {trained.run_id}"


def test_the_curves_figure_redrawn_each_epoch_shows_that_epoch_alone():
    """A training redraws one figure every epoch: each PNG must be what a new figure draws of that history
    (no line, scale or tick of an earlier epoch left over), and the image must change as epochs come."""
    import io

    from PIL import Image

    from coroseg.visualize import TrainingCurves

    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_dice": 0.3 + 0.05 * e,
                "learning_rate": 3e-3 * (0.9 ** e)} for e in range(1, 9)]
    reused, drawn = TrainingCurves(), []
    for e in range(1, len(history) + 1):
        png = reused.png(history[:e])
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))),
                              np.asarray(Image.open(io.BytesIO(TrainingCurves().png(history[:e]))))), e
        drawn.append(png)
    assert Image.open(io.BytesIO(drawn[-1])).size == (1080, 306)
    assert len(set(drawn)) == len(drawn)
