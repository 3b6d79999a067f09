"""Inference and evaluation runs, asserted through MlflowClient and on disk."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli
from tests.test_training_run import all_artifacts


@pytest.fixture(scope="module")
def predicted(trained, pairs_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "out"
    result = run_cli("predict", "--model", f"runs:/{trained.run_id}/pytorch_model", "--input", pairs_dir,
                     "--output", out, "--tracking-uri", trained.store, "--experiment", "tests", "--batch-size", 4)
    assert result.exit_code == 0, result.stderr
    return result, out


def test_predict_run_has_the_inference_layout(client, predicted, pairs_dir):
    result, out = predicted
    run_id = result.value("run_id")
    assert result.stdout.strip().splitlines()[-1] == f"run_id: {run_id}"
    stems = sorted(p.stem for p in pairs_dir.glob("*.png") if not p.stem.endswith("_gt"))
    artifacts = all_artifacts(client, run_id)
    for stem in stems:
        assert f"predictions/inputs/{stem}.png" in artifacts
        assert f"predictions/outputs/{stem}_mask.png" in artifacts
        assert f"predictions/comparisons/{stem}.png" in artifacts
        assert f"predictions/metadata/{stem}.json" in artifacts
    assert not any("_gt" in a for a in artifacts), "ground-truth masks must not be treated as inputs"
    assert {"inference/summary/summary.md", "inference/summary/summary.json"} <= artifacts
    # the output folder is laid out like the run
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert artifacts <= on_disk


def test_predict_params_tags_metrics(client, predicted, trained):
    result, _ = predicted
    run = client.get_run(result.value("run_id"))
    assert run.data.params["inference_mode"] == "True"
    assert run.data.params["model_uri"] == f"runs:/{trained.run_id}/pytorch_model"
    assert run.data.params["resolution"] == "64"          # the model's training size
    assert run.data.params["device"] == "cpu"
    # the post-processing chosen on validation at training time is what predict applies
    trained_run = client.get_run(trained.run_id)
    assert float(run.data.params["threshold"]) == pytest.approx(trained_run.data.metrics["chosen_threshold"])
    assert float(run.data.params["min_component_fraction"]) == pytest.approx(
        trained_run.data.metrics["chosen_min_component_fraction"])
    assert run.data.tags["task"] == "inference" and run.data.tags["mode"] == "prediction"
    metrics = run.data.metrics
    assert metrics["files_processed"] == 6
    assert metrics["inference_duration_seconds"] > 0
    assert metrics["processing_rate_files_per_second"] == pytest.approx(6 / metrics["inference_duration_seconds"])
    assert metrics["peak_memory_mb"] > 0


def test_predicted_masks_have_the_input_size_and_metadata(predicted, pairs_dir):
    _, out = predicted
    mask = np.asarray(Image.open(out / "predictions/outputs/1_mask.png"))
    assert mask.shape == np.asarray(Image.open(pairs_dir / "1.png")).shape
    assert set(np.unique(mask)) <= {0, 255}
    meta = json.loads((out / "predictions/metadata/1.json").read_text())
    assert meta["source_path"] == str(pairs_dir / "1.png")
    assert meta["width"] == 80 and meta["height"] == 80
    assert meta["vessel_fraction"] == pytest.approx((mask > 0).mean())


def test_predict_refuses_to_write_over_earlier_results(predicted, trained, pairs_dir):
    _, out = predicted
    before = (out / "predictions/outputs/1_mask.png").read_bytes()
    result = run_cli("predict", "--model", f"runs:/{trained.run_id}/pytorch_model", "--input", pairs_dir,
                     "--output", out, "--no-tracking")
    assert result.exit_code == 2
    assert "--overwrite" in result.stderr
    assert (out / "predictions/outputs/1_mask.png").read_bytes() == before


def test_predict_single_file_from_local_model_folder_without_tracking(trained, pairs_dir, tmp_path):
    import mlflow

    local_model = mlflow.artifacts.download_artifacts(f"runs:/{trained.run_id}/pytorch_model",
                                                      tracking_uri=trained.store, dst_path=str(tmp_path / "m"))
    assert (tmp_path / "m/pytorch_model/data/model.safetensors").is_file()
    result = run_cli("predict", "--model", local_model, "--input", pairs_dir / "2.png", "--output",
                     tmp_path / "o", "--no-tracking", "--resolution", 96)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "o/predictions/outputs/2_mask.png").is_file()
    assert result.stdout.strip().splitlines()[-1] == "run_id: none (not tracked)"


def test_predict_bad_model_uri_is_one_line(tmp_path, pairs_dir, trained):
    result = run_cli("predict", "--model", "runs:/0123456789abcdef/pytorch_model", "--input", pairs_dir,
                     "--output", tmp_path / "o", "--tracking-uri", trained.store)
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "cannot load model" in result.stderr


def test_evaluate_logs_means_and_per_image_csv(client, trained, pairs_dir, tmp_path):
    result = run_cli("evaluate", "--model", f"runs:/{trained.run_id}/pytorch_model", "--data", pairs_dir,
                     "--output", tmp_path / "eval", "--tracking-uri", trained.store, "--experiment", "tests")
    assert result.exit_code == 0, result.stderr
    run = client.get_run(result.value("run_id"))
    rows = list(csv.DictReader(open(client.download_artifacts(run.info.run_id, "evaluation/per_image/metrics.csv"))))
    assert len(rows) == 6
    for name in ("dice", "iou", "precision", "recall"):
        values = [float(r[name]) for r in rows]
        assert run.data.metrics[name] == pytest.approx(np.nanmean(values), nan_ok=True)   # no frame has a score: NaN both
        assert all(0.0 <= v <= 1.0 for v in values if not np.isnan(v))
    assert run.data.tags["task"] == "evaluation"
    for name in ("sensitivity", "specificity", "cldice", "hd95", "assd", "component_error"):
        assert name in run.data.metrics, name
    summary = json.loads(open(client.download_artifacts(run.info.run_id, "evaluation/summary/summary.json")).read())
    worst = summary["worst_by_dice"]
    assert len(worst) == 5 and [w["dice"] for w in worst] == sorted(float(r["dice"]) for r in rows)[:5]
    assert all(f"predictions/comparisons/{w['image']}.png" == w["comparison"] for w in worst)


def test_image_metrics_on_known_masks():
    from coroseg.evaluation.metrics import image_metrics

    truth = np.zeros((10, 10), bool)
    truth[:, :4] = True                       # 40 px
    pred = np.zeros((10, 10), bool)
    pred[:, 2:6] = True                       # 40 px, 20 overlap
    m = image_metrics(pred, truth)
    assert m["dice"] == pytest.approx(0.5)
    assert m["iou"] == pytest.approx(20 / 60)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.5)
    assert image_metrics(truth, truth)["dice"] == pytest.approx(1.0)


def test_predict_from_the_model_registry(trained, pairs_dir, tmp_path):
    import mlflow

    mlflow.set_tracking_uri(trained.store)
    version = mlflow.register_model(f"runs:/{trained.run_id}/pytorch_model", "coroseg-test-model")
    result = run_cli("predict", "--model", f"models:/coroseg-test-model/{version.version}", "--input",
                     pairs_dir / "1.png", "--output", tmp_path / "o", "--tracking-uri", trained.store)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "o/predictions/outputs/1_mask.png").is_file()


@pytest.mark.parametrize("kind", ["runs", "models"])
def test_a_fresh_process_finds_the_model_in_the_named_store(trained, pairs_dir, tmp_path, kind):
    """No global MLflow state from earlier calls: --tracking-uri alone must locate runs:/ and models:/."""
    import os
    import subprocess
    import sys

    import mlflow

    uri = f"runs:/{trained.run_id}/pytorch_model"
    if kind == "models":
        mlflow.set_tracking_uri(trained.store)
        version = mlflow.register_model(uri, "coroseg-fresh-process")
        uri = f"models:/coroseg-fresh-process/{version.version}"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([sys.executable, "-m", "coroseg", "predict", "--model", uri, "--input", str(pairs_dir / "1.png"),
                           "--output", str(tmp_path / "o"), "--tracking-uri", trained.store],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o/predictions/outputs/1_mask.png").is_file()
    assert not (tmp_path / "mlflow.db").exists()


def test_in_order_keeps_the_order_and_bounds_the_work_in_flight():
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from coroseg.inference.predict import in_order

    running, most, lock = 0, 0, threading.Lock()

    def slow_square(x: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02 * (x % 3))                   # later items often finish first
        with lock:
            running -= 1
        return x * x

    with ThreadPoolExecutor(8) as pool:
        assert list(in_order(pool, slow_square, range(20), ahead=3)) == [x * x for x in range(20)]
    assert most <= 3


def test_prediction_threads_write_what_one_thread_writes(trained, pairs_dir, tmp_path, monkeypatch):
    """Frames read, predicted and encoded by 3 threads, in batches of 4 for 6 frames: every file and its
    metadata are those of a single thread, and the summary lists the frames in input order."""
    import coroseg.inference.predict as predict

    outputs = {}
    for threads in (1, 3):
        monkeypatch.setattr(predict, "host_threads", lambda: threads)
        out = tmp_path / f"threads{threads}"
        result = run_cli("predict", "--model", f"runs:/{trained.run_id}/pytorch_model", "--input", pairs_dir,
                         "--output", out, "--tracking-uri", trained.store, "--no-tracking", "--batch-size", 4)
        assert result.exit_code == 0, result.stderr
        files = {p.relative_to(out).as_posix(): p.read_bytes() for p in (out / "predictions").rglob("*.png")}
        summary = json.loads((out / "inference/summary/summary.json").read_text())
        metadata = [{k: v for k, v in m.items() if k != "inference_seconds"} for m in summary["files"]]
        outputs[threads] = files, metadata
    assert len(outputs[1][0]) == 3 * 6 and outputs[1] == outputs[3]
    names = [m["source_path"] for m in outputs[3][1]]
    assert len(names) == 6 and names == sorted(names)
