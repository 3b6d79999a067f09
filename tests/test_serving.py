"""The logged model is the whole predictor: served over REST by `mlflow models serve`, a raw frame in gives
`coroseg predict`'s mask out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import free_port, run_cli, stop, wait_http

FRAME = Path(__file__).parent / "data" / "cimat_1.png"      # a real 300x300 uint8 angiogram


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


@pytest.fixture()
def served(trained, tmp_path):
    """`mlflow models serve` of the fixture run's model, on loopback, with the local environment."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": trained.store,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{trained.run_id}/pytorch_model",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", timeout=120)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


@pytest.mark.integration
def test_a_served_raw_frame_gets_the_mask_coroseg_predict_gives(served, trained, tmp_path):
    frame = np.asarray(Image.open(FRAME))
    assert frame.dtype == np.uint8 and frame.shape == (300, 300)
    answer = _post(f"{served}/invocations", {"inputs": [frame.tolist()]})
    served_mask = np.asarray(answer["predictions"], dtype=np.uint8)[0]
    predicted = run_cli("predict", "--model", f"runs:/{trained.run_id}/pytorch_model", "--input", FRAME,
                        "--output", tmp_path / "out", "--tracking-uri", trained.store, "--no-tracking")
    assert predicted.exit_code == 0, predicted.stderr
    coroseg_mask = np.asarray(Image.open(tmp_path / "out/predictions/outputs/cimat_1_mask.png")) > 0
    assert served_mask.shape == coroseg_mask.shape
    assert set(np.unique(served_mask)) <= {0, 1}
    assert (served_mask.astype(bool) == coroseg_mask).mean() >= 0.995
    # probabilities on request, of the frame's own size
    answer = _post(f"{served}/invocations", {"inputs": [frame.tolist()], "params": {"output": "probability"}})
    probabilities = np.asarray(answer["predictions"], dtype=np.float32)[0]
    assert probabilities.shape == (300, 300) and 0.0 <= probabilities.min() <= probabilities.max() <= 1.0
    assert ((probabilities > trained_threshold(trained)) == served_mask.astype(bool)).mean() >= 0.99


def trained_threshold(trained) -> float:
    import mlflow

    return float(mlflow.models.get_model_info(f"runs:/{trained.run_id}/pytorch_model").metadata["threshold"])


@pytest.mark.integration
def test_the_served_example_is_the_models_own_input_example(served, trained):
    """The serving example MLflow saved with the model (a real frame as read) is answered with a mask."""
    import mlflow

    mlflow.set_tracking_uri(trained.store)
    example = json.loads(Path(mlflow.artifacts.download_artifacts(
        f"runs:/{trained.run_id}/pytorch_model/serving_input_example.json")).read_text())
    frame = np.asarray(example["inputs"])
    masks = np.asarray(_post(f"{served}/invocations", example)["predictions"])
    assert masks.shape == frame.shape and set(np.unique(masks)) <= {0, 1}
