"""Exporting a logged model's network for deployment outside Python: an ONNX or TorchScript file, with the
model spec beside it (`<output>.spec.json`).

What is exported is `SegmentationModel.forward` (models.py): float32 (N,1,H,W) prepared frames in, vessel
probabilities of the same shape out, batch and both sides dynamic. The padding to the network's divisor is
computed in the graph from the input's shape, so no size of the example is frozen into it. Preprocessing
(field of view, normalisation, CLAHE), resizing and post-processing stay outside the graph: the spec file says
what they are, and its `usage` paragraph how to apply them.

Each file is checked before it is published: the exported network is run (onnxruntime, torch.jit.load) on a
batch and a size unlike the export example, neither a multiple of the divisor, and must match the torch model.
Files are written atomically and never replace an existing one unless asked to.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata as package_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from coroseg import __version__
from coroseg.errors import InputError, first_line
from coroseg.tracking.redact import redact_text

if TYPE_CHECKING:
    from coroseg.inference.model_loading import LoadedModel

INPUT_NAME, OUTPUT_NAME = "image", "probabilities"
AXES = {0: "batch", 2: "height", 3: "width"}       # the dynamic axes of both tensors
SPEC_SUFFIX = ".spec.json"
TOLERANCE = 1e-4          # max |exported - torch| of the probabilities; measured ~1e-6 for ONNX, 0 for TorchScript
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


@dataclass
class ExportOutcome:
    output: Path
    spec: Path
    max_abs_difference: float
    seconds: float


def spec_path(output: Path) -> Path:
    return output.with_name(output.name + SPEC_SUFFIX)


def _check_shape(divisor: int) -> tuple[int, ...]:
    """The check's input: batch and sides unlike the export example's, sides not multiples of the divisor."""
    return (3, 1, 3 * divisor + 5, 5 * divisor + 3)


# --- ONNX -------------------------------------------------------------------------------------------------

@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's noise (missing torchvision ops, torch-internal deprecations) is not the user's concern."""
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        exporter_log.setLevel(level)


def _export_onnx(module: torch.nn.Module, divisor: int, path: Path) -> dict[str, Any]:
    import onnx_ir

    dims = {axis: torch.export.Dim(name, min=1) for axis, name in AXES.items()}
    # Batch 2: torch.export would specialise a dimension of size 1. The example's sides do not matter: the
    # export traces with symbolic sizes (checked at other sizes below).
    example = torch.rand(2, 1, 4 * divisor, 4 * divisor)
    with _quiet_exporter():
        program = torch.onnx.export(module, (example,), None, dynamo=True, verbose=False, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=(dims,))
    graph = program.model.graph
    # The exporter names the output's sides by the padding arithmetic (Min(height, 2*(...))); they are the input's.
    graph.outputs[0].shape = onnx_ir.Shape(list(graph.inputs[0].shape))
    program.save(str(path), external_data=False)     # one self-contained file (coroseg networks are far below 2 GB)
    return {"opset": program.model.opset_imports[""]}


def _run_onnx(path: Path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]


# --- TorchScript ------------------------------------------------------------------------------------------

def _export_torchscript(module: torch.nn.Module, divisor: int, path: Path) -> dict[str, Any]:
    # Scripted, not traced: tracing would record the padding computed for the example's size as constants.
    torch.jit.script(module).save(str(path))
    return {}


def _run_torchscript(path: Path, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.jit.load(str(path), map_location="cpu")(torch.from_numpy(batch)).numpy()


@dataclass(frozen=True)
class Format:
    export: Callable[[torch.nn.Module, int, Path], dict[str, Any]]   # writes the file; returns facts for the spec
    run: Callable[[Path, np.ndarray], np.ndarray]
    packages: tuple[str, ...]
    how_to_run: str


FORMATS: dict[str, Format] = {
    "onnx": Format(_export_onnx, _run_onnx, ONNX_PACKAGES,
                   f"onnxruntime.InferenceSession(path).run(['{OUTPUT_NAME}'], {{'{INPUT_NAME}': batch}})[0]"),
    "torchscript": Format(_export_torchscript, _run_torchscript, (),
                          "torch.jit.load(path)(torch.from_numpy(batch)) (or torch::jit::load in C++)"),
}


def _usage(fmt: str) -> str:
    return (
        f"Read each frame as grayscale float32 in [0, 1] (8-bit / 255, 16-bit / 65535). Prepare it as "
        f"coroseg.data.preprocess.prepare does with the 'preprocessing' settings above: detect the field of view "
        f"(FOV), map the 0.5th..99.5th intensity percentiles inside it to 0..1 (clipped) and set 0 outside it, "
        f"then CLAHE if true. Resize it (bilinear, antialiased) to image_size x image_size, the size the network "
        f"was trained at (other sizes run, any batch and any sides), stack frames into a float32 (N,1,H,W) batch "
        f"and run {FORMATS[fmt].how_to_run}. The result '{OUTPUT_NAME}' is float32 (N,1,H,W) vessel probabilities: "
        f"resize each back to its frame's size, set it to 0 outside the FOV, take probabilities > threshold as the "
        f"vessel mask and drop its connected pieces (8-connected) smaller than min_component_fraction of the "
        f"frame's area."
    )


def _spec_document(loaded: LoadedModel, fmt: str, output: Path, facts: dict[str, Any]) -> dict[str, Any]:
    """The model spec (ModelSpec.from_metadata reads it back; it ignores the keys added here) and how to run it."""
    versions = {name: package_metadata.version(name) for name in ("torch", *FORMATS[fmt].packages)}
    return {
        **loaded.spec.to_metadata(),
        "format": fmt,
        "file": output.name,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "dynamic_axes": {str(axis): name for axis, name in AXES.items()},
        **facts,
        "source_model": redact_text(loaded.uri),
        "exported_with": {"coroseg": __version__, **versions},
        "usage": _usage(fmt),
    }


# --- files ------------------------------------------------------------------------------------------------

def _exists(path: Path) -> InputError:
    return InputError(f"{path}: already exists; pass --overwrite to replace it")


def _refuse_existing(path: Path) -> None:
    if path.exists() or path.is_symlink():
        raise _exists(path)


@contextmanager
def _written(dest: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary path in dest's folder that becomes dest when the block succeeds: readers never see a half
    written file, and a failed export leaves nothing behind. The block creates the file itself, so that it gets
    the usual permissions (mkstemp's would be owner-only)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{dest.parent}: cannot create the folder ({first_line(exc)})") from exc
    temporary = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield temporary
        if overwrite:
            os.replace(temporary, dest)
        else:
            _link_new(temporary, dest)
    finally:
        temporary.unlink(missing_ok=True)


def _link_new(temporary: Path, dest: Path) -> None:
    """dest made from temporary unless it exists by now (another process may have written it during the export):
    a hard link is created atomically and never replaces a file."""
    try:
        os.link(temporary, dest)
    except FileExistsError:
        raise _exists(dest) from None
    except OSError:           # a file system without hard links: check, then rename
        _refuse_existing(dest)
        os.replace(temporary, dest)


# --- the stage --------------------------------------------------------------------------------------------

def _require(fmt: str) -> None:
    missing = [name for name in FORMATS[fmt].packages if importlib.util.find_spec(name) is None]
    if missing:
        raise InputError(f"--format {fmt} needs the packages {', '.join(missing)}: pip install 'coroseg[export]'")


def _loaded(uri: str, tracking_uri: str | None) -> LoadedModel:
    from coroseg.inference.model_loading import load_model   # here: the CLI imports this module for FORMATS

    loaded = load_model(uri, torch.device("cpu"), tracking_uri)   # exported files are device-free; CPU loads anywhere
    if loaded.spec.family is None:
        raise InputError(f"{uri}: the model has no coroseg metadata (a bare exported graph); export needs a model "
                         "logged by coroseg (its family, weights and preprocessing)")
    return loaded


def _difference(fmt: str, path: Path, module: torch.nn.Module, divisor: int) -> float:
    """max |exported - torch| of the probabilities at the check's batch and size."""
    batch = torch.rand(_check_shape(divisor), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = module(batch).numpy()
    got = FORMATS[fmt].run(path, batch.numpy())
    if got.shape != expected.shape:
        return float("inf")
    return float(np.abs(got - expected).max())


def export_model(uri: str, fmt: str, output: str | Path, overwrite: bool = False,
                 tracking_uri: str | None = None) -> ExportOutcome:
    """Write the network of the model at `uri` as `fmt` to `output`, and its spec to `spec_path(output)`."""
    output = Path(output)
    spec_file = spec_path(output)
    _require(fmt)
    for path in (output, spec_file):
        if path.is_dir():
            raise InputError(f"{path}: is a folder; --output names the file to write")
        if not overwrite:   # before the seconds of loading and exporting; checked again when publishing
            _refuse_existing(path)
    loaded = _loaded(uri, tracking_uri)
    module, divisor = loaded.module.eval(), loaded.spec.divisor
    start = time.perf_counter()
    with _written(output, overwrite) as temporary:
        facts = FORMATS[fmt].export(module, divisor, temporary)
        seconds = time.perf_counter() - start
        difference = _difference(fmt, temporary, module, divisor)
        if not difference < TOLERANCE:   # never publish a network that computes something else
            raise InputError(f"{output}: not written: the exported {fmt} network differs from the model by "
                             f"{difference:.2g} (> {TOLERANCE:g}) at input shape {_check_shape(divisor)}")
    facts.update(checked_input_shape=list(_check_shape(divisor)), max_abs_difference=difference)
    with _written(spec_file, overwrite) as temporary:
        temporary.write_text(json.dumps(_spec_document(loaded, fmt, output, facts), indent=2) + "\n")
    return ExportOutcome(output, spec_file, difference, seconds)
