"""coroseg export: ONNX and TorchScript files that compute what the model computes, at any batch and size, with
the model spec beside them; existing files are never replaced unless asked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from coroseg.data.imageio import read_gray
from coroseg.data.preprocess import prepare
from coroseg.inference.model_loading import load_model
from coroseg.model_spec import ModelSpec
from tests.conftest import run_cli

FRAME = Path(__file__).parent / "data" / "cimat_1.png"      # a real 300x300 angiogram (see data/SOURCE.md)
TOLERANCE = 1e-4      # max |exported - torch| of the probabilities (measured: ~1e-6 ONNX, 0 TorchScript)


@pytest.fixture(scope="module")
def loaded(local_model):
    return load_model(local_model, torch.device("cpu"))


@pytest.fixture(scope="module")
def frame(loaded) -> np.ndarray:
    """A real angiogram (300x300), prepared as coroseg prepares it for this model."""
    image, _ = prepare(read_gray(FRAME), loaded.spec.preprocessing)
    return image


def batches(frame: np.ndarray) -> list[np.ndarray]:
    """The frame at its own size, then a batch of 3 other crops of it at a size that is not a multiple of 16
    (the export example is (2,1,64,64) for this model)."""
    crops = [frame[:200, :248], frame[100:, 52:], frame[50:250, 20:268][::-1]]
    return [frame[None, None], np.ascontiguousarray(np.stack(crops)[:, None])]


def expected(loaded, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return loaded.module(torch.from_numpy(batch)).numpy()


@pytest.fixture(scope="module")
def exported(local_model, tmp_path_factory):
    """Each format exported once by the CLI: {format: (result, output path)}."""
    folder = tmp_path_factory.mktemp("export")
    outputs = {"onnx": folder / "onnx" / "vessels.onnx", "torchscript": folder / "vessels.pt"}  # onnx/ is created
    results = {}
    for fmt, output in outputs.items():
        result = run_cli("export", "--model", local_model, "--format", fmt, "--output", output)
        assert result.exit_code == 0, result.stderr
        results[fmt] = (result, output)
    return results


def test_onnx_matches_torch_at_other_batches_and_sizes(exported, loaded, frame):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(exported["onnx"][1]), providers=["CPUExecutionProvider"])
    (image,), (probabilities,) = session.get_inputs(), session.get_outputs()
    assert image.name == "image" and image.shape == ["batch", 1, "height", "width"]
    assert probabilities.name == "probabilities" and probabilities.shape == ["batch", 1, "height", "width"]
    for batch in batches(frame):
        got = session.run(["probabilities"], {"image": batch})[0]
        assert got.shape == batch.shape
        assert np.abs(got - expected(loaded, batch)).max() < TOLERANCE


def test_torchscript_matches_torch_at_other_batches_and_sizes(exported, loaded, frame):
    network = torch.jit.load(str(exported["torchscript"][1]), map_location="cpu")
    for batch in batches(frame):
        with torch.no_grad():
            got = network(torch.from_numpy(batch)).numpy()
        assert got.shape == batch.shape
        assert np.abs(got - expected(loaded, batch)).max() < TOLERANCE


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_spec_beside_the_file_round_trips(exported, loaded, local_model, fmt):
    result, output = exported[fmt]
    spec_file = output.with_name(output.name + ".spec.json")
    assert result.stdout.strip().splitlines()[-2:] == [f"output: {output}", f"spec: {spec_file}"]
    assert float(result.value("max_abs_difference")) < TOLERANCE
    document = json.loads(spec_file.read_text())
    assert ModelSpec.from_metadata(document, spec_file) == loaded.spec
    assert document["format"] == fmt and document["file"] == output.name
    assert (document["input_name"], document["output_name"]) == ("image", "probabilities")
    assert document["source_model"] == local_model
    assert "threshold" in document["usage"] and "image_size" in document["usage"]
    assert sorted(p.name for p in output.parent.iterdir() if p.name.startswith(".")) == []   # no temporary left


def test_refuses_to_overwrite_an_existing_file(local_model, tmp_path):
    output = tmp_path / "vessels.onnx"
    output.write_bytes(b"someone's file")
    result = run_cli("export", "--model", local_model, "--format", "onnx", "--output", output)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"coroseg: error: {output}: already exists; pass --overwrite to replace it"
    assert output.read_bytes() == b"someone's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vessels.onnx"]


def test_overwrite_replaces_the_file_and_its_spec(local_model, tmp_path):
    output = tmp_path / "vessels.pt"
    spec_file = tmp_path / "vessels.pt.spec.json"
    for path in (output, spec_file):
        path.write_text("old")
    result = run_cli("export", "--model", local_model, "--format", "torchscript", "--output", output, "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert torch.jit.load(str(output))(torch.rand(2, 1, 40, 40)).shape == (2, 1, 40, 40)
    assert json.loads(spec_file.read_text())["format"] == "torchscript"


def test_unknown_format_is_rejected(local_model, tmp_path):
    result = run_cli("export", "--model", local_model, "--format", "tflite", "--output", tmp_path / "m.tflite")
    assert result.exit_code == 2
    assert "Invalid value for '--format'" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_model_without_coroseg_metadata_is_refused(pt2_model, tmp_path):
    import yaml

    model = Path(shutil.copytree(pt2_model, tmp_path / "bare"))
    mlmodel = yaml.safe_load((model / "MLmodel").read_text())
    del mlmodel["metadata"]          # a torch.export graph logged elsewhere: no family, weights or preprocessing
    (model / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    result = run_cli("export", "--model", model, "--format", "torchscript", "--output", tmp_path / "out" / "m.pt")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"coroseg: error: {model}: the model has no coroseg metadata (a bare exported graph); export needs a model "
        "logged by coroseg (its family, weights and preprocessing)")
    assert not (tmp_path / "out").exists()
