"""`coroseg predict`: masks, overlays and JSON per frame, in the inference layout, on disk and in MLflow.

The output folder is laid out exactly like the MLflow run (predictions/outputs, predictions/comparisons,
...), so what a user finds on disk and in the UI is the same.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from itertools import islice
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from coroseg.data.dicom import is_dicom_file, probe_dicom, read_frame
from coroseg.data.imageio import encode_png, read_gray
from coroseg.data.pairs import MaskSource, find_inputs, ground_truth_for, load_mask
from coroseg.errors import InputError
from coroseg.host_threads import T, host_threads, in_order
from coroseg.inference.model_loading import LoadedModel, load_model
from coroseg.inference.predictor import DEFAULT_TTA, Predictor
from coroseg.tracking import layout
from coroseg.tracking.base import make_tracker, run_status
from coroseg.tracking.environment import environment, environment_params, resolve_device
from coroseg.tracking.record import RunRecord, ensure_writable, markdown_table
from coroseg.tracking.redact import redact_uri
from coroseg.visualize import comparison

log = logging.getLogger("coroseg")


@dataclass
class InferenceOptions:
    model_uri: str
    output: str | None
    batch_size: int = 4
    resolution: int | None = None
    device: str = "auto"
    overwrite: bool = False
    tracking_uri: str | None = None
    experiment: str = "coroseg"
    tracking: bool = True
    tta: bool = DEFAULT_TTA            # flip test-time augmentation (predictor.FLIPS)


@dataclass(frozen=True)
class FrameInput:
    """One frame to predict on: its file, its output name, how to read it, what it adds to its metadata."""

    source: Path
    name: str
    read: Callable[[], np.ndarray]
    truth: MaskSource | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FileResult:
    """What stays of a predicted frame once its files are written: its metadata and, when measured, its scores
    (the masks themselves are not kept, so memory does not grow with the number of frames)."""

    source: Path
    name: str
    seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)


# A frame's scores from its predicted mask, its ground truth and its field of view (evaluation.metrics).
Measure = Callable[[np.ndarray, np.ndarray | None, np.ndarray], dict[str, float]]


@dataclass
class _Prepared:
    """A frame read, with its mask when there is one, and prepared for the network."""

    item: FrameInput
    frame: np.ndarray
    truth: np.ndarray | None
    image: np.ndarray
    fov: np.ndarray


@dataclass
class InferenceOutcome:
    run_id: str | None
    tracking_failed: bool
    files: int
    output: Path
    results: list[FileResult]


def unique_names(paths: list[Path]) -> list[str]:
    """Output names from file stems; `a.png` and `a.tif` become `a` and `a_tif`."""
    seen: set[str] = set()
    names = []
    for path in paths:
        name = path.stem if path.stem not in seen else f"{path.stem}_{path.suffix.lstrip('.')}"
        seen.add(name)
        names.append(name)
    return names


def image_frame(path: Path, name: str, truth: MaskSource | None) -> FrameInput:
    return FrameInput(path, name, partial(read_gray, path), truth)


def image_frames(paths: list[Path], truths: list[MaskSource | None]) -> list[FrameInput]:
    return [image_frame(path, name, truth) for path, name, truth in zip(paths, unique_names(paths), truths)]


def dicom_frames(path: Path, name: str) -> list[FrameInput]:
    """One input per frame, named `<name>_fNNN` (1-based); the metadata gets the header's technical fields only."""
    fields = probe_dicom(path)
    count = fields["frames"]
    return [FrameInput(path, f"{name}_f{i + 1:03d}", partial(read_frame, path, i),
                       extra={"frame": i + 1, "frames": count, "dicom": fields}) for i in range(count)]


def frames_to_predict(paths: list[Path]) -> list[FrameInput]:
    """Every frame of the input files (a DICOM cine's frames counted from its header)."""
    frames: list[FrameInput] = []
    for path, name in zip(paths, unique_names(paths)):
        if is_dicom_file(path):
            frames += dicom_frames(path, name)
        else:
            frames.append(image_frame(path, name, ground_truth_for(path)))
    return frames


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _check_frame(item: FrameInput) -> None:
    item.read()
    if item.truth is not None:
        load_mask(item.truth)


def check_frames(frames: list[FrameInput]) -> None:
    """Decode every frame (and mask) once before anything is created: a truncated or corrupt file then stops
    the command with its name, not a run halfway through. Decoding twice costs far less than inference."""
    if len(frames) > 50:
        log.info("checking %d frames", len(frames))
    with ThreadPoolExecutor(host_threads()) as pool:
        for _ in pool.map(_check_frame, frames):        # the first bad file, in input order, raises
            pass


def check_output(output: Path, overwrite: bool) -> None:
    """Never write over earlier predictions unless asked to; an output we cannot write fails before any run."""
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: exists and is not a folder")
    taken = [output / d for d in ("predictions", "inference", "evaluation") if (output / d).exists()]
    if taken and not overwrite:
        raise InputError(f"{taken[0]}: already holds results; choose a new --output or pass --overwrite")
    ensure_writable(output)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class InferenceSession:
    """One inference run: model, predictor, output folder and tracker, shared by predict and evaluate."""

    def __init__(self, options: InferenceOptions, model: LoadedModel, output: Path, tags: dict[str, str],
                 run_name: str) -> None:
        self.options, self.output, self.model = options, output, model
        self.device = resolve_device(options.device)
        self.predictor = Predictor(self.model, options.resolution, options.batch_size, options.tta)
        self.tracker = make_tracker(options.tracking, options.tracking_uri, options.experiment, output)
        self.record = RunRecord(output, self.tracker)
        self.env = environment(self.device)
        self.tracker.start(run_name, tags)
        self.started = time.perf_counter()

    def log_params(self, inputs: list[Path], extra: dict[str, Any]) -> None:
        self.tracker.log_params({
            "inference_mode": True,
            "resolution": self.predictor.resolution,
            "model_uri": redact_uri(self.options.model_uri),
            "device": str(self.device),
            "batch_size": self.options.batch_size,
            "tta": self.options.tta,
            "threshold": self.model.spec.postprocessing.threshold,
            "min_component_fraction": self.model.spec.postprocessing.min_component_fraction,
            **{f"preprocessing_{k}": v for k, v in self.predictor.preprocessing.to_metadata().items()},
            "model_family": self.model.spec.family,
            "files": len(inputs),
            **extra,
            **environment_params(self.env),
        })

    def run(self, inputs: list[Path], truths: list[MaskSource | None],
            measure: Measure | None = None) -> list[FileResult]:
        """Predict on image files, each with its mask when there is one; `measure` scores each frame."""
        return self.run_frames(image_frames(inputs, truths), measure)

    def run_frames(self, inputs: list[FrameInput], measure: Measure | None = None) -> list[FileResult]:
        """A pipeline: threads read and prepare the frames ahead of the network, which takes them a batch at a
        time, and threads post-process, score (`measure`) and encode its outputs behind it; the files are
        written here, in order."""
        results: list[FileResult] = []
        progress = tqdm(total=len(inputs), desc="predict", unit="frame", file=sys.stderr,
                        disable=not sys.stderr.isatty())
        threads = host_threads()
        ahead = 2 * max(threads, self.options.batch_size)
        pool = ThreadPoolExecutor(threads)
        try:
            prepared = in_order(pool, self._prepare, inputs, ahead)
            predicted = (one for chunk in chunks(prepared, self.options.batch_size) for one in self._predict(chunk))
            for result, files in in_order(pool, partial(self._encode, measure=measure), predicted, ahead):
                self._write(result, files)
                results.append(result)
                progress.update(1)
        finally:
            pool.shutdown(cancel_futures=True)
            progress.close()
        return results

    def _prepare(self, item: FrameInput) -> _Prepared:
        frame = item.read()
        truth = load_mask(item.truth) if item.truth is not None else None
        if truth is not None and truth.shape != frame.shape:
            truth = None
            log.warning("%s: ground truth size differs from the image; left out", item.source)
        return _Prepared(item, frame, truth, *self.predictor.prepare(frame))

    def _predict(self, chunk: list[_Prepared]) -> list[tuple[_Prepared, np.ndarray, float]]:
        t0 = time.perf_counter()
        probabilities = self.predictor.fov_probabilities([p.image for p in chunk], [p.fov for p in chunk])
        per_file = (time.perf_counter() - t0) / len(chunk)
        return [(p, probs, per_file) for p, probs in zip(chunk, probabilities)]

    def _encode(self, predicted: tuple[_Prepared, np.ndarray, float],
                measure: Measure | None) -> tuple[FileResult, dict[str, tuple[str, bytes]]]:
        """The frame's result (metadata, scores) and its PNGs by category: (file name, bytes)."""
        p, probabilities, seconds = predicted
        mask = self.predictor.mask(probabilities)
        result = FileResult(p.item.source, p.item.name, seconds,
                            scores=measure(mask, p.truth, p.fov) if measure is not None else {})
        height, width = p.frame.shape
        result.metadata = {
            "source_path": str(result.source),
            **p.item.extra,
            "width": width,
            "height": height,
            "inference_seconds": round(result.seconds, 4),
            "vessel_fraction": float(mask.mean()),
            "field_of_view_fraction": float(p.fov.mean()),
            "threshold": self.model.spec.postprocessing.threshold,
            "min_component_fraction": self.model.spec.postprocessing.min_component_fraction,
            "resolution": self.predictor.resolution,
            "model_uri": redact_uri(self.options.model_uri),
            "mask": f"{layout.artifact_dir('outputs')}/{result.name}_mask.png",
        }
        return result, {
            "inputs": (f"{result.name}.png", encode_png(p.frame)),
            "outputs": (f"{result.name}_mask.png", encode_png(mask)),
            "comparisons": (f"{result.name}.png", encode_png(comparison(p.frame, mask, p.truth))),
        }

    def _write(self, result: FileResult, files: dict[str, tuple[str, bytes]]) -> None:
        """Here, not in the threads: the record's journal takes one writer."""
        for category, (filename, data) in files.items():
            self.record.write_bytes(category, filename, data)
        self.record.write_json("metadata", f"{result.name}.json", result.metadata)

    def finish(self, results: list[FileResult], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        duration = time.perf_counter() - self.started
        metrics = {
            "inference_duration_seconds": duration,
            "files_processed": len(results),
            "processing_rate_files_per_second": len(results) / duration if duration > 0 else 0.0,
            "peak_memory_mb": peak_memory_mb(self.device),
        }
        self.tracker.log_metrics(metrics)
        summary = {
            **metrics,
            "model_uri": redact_uri(self.options.model_uri),
            "model_family": self.model.spec.family,
            "device": str(self.device),
            "device_name": self.env["device_name"],
            "resolution": self.predictor.resolution,
            "tta": self.options.tta,
            "files": [r.metadata for r in results],
            **(extra or {}),
            "run_id": self.tracker.run_id,
            "output": str(self.output),
        }
        self.record.write_json("inference_summary", "summary.json", summary)
        self.record.write_json("inference_summary", "environment.json", self.env)
        table = {k: v for k, v in summary.items() if k != "files"}
        self.record.write_text("inference_summary", "summary.md", "# Inference run\n\n" + markdown_table(table))
        return summary

    def close(self, status: str) -> None:
        self.tracker.finish(status)


def load_options_model(options: InferenceOptions) -> LoadedModel:
    return load_model(options.model_uri, resolve_device(options.device), options.tracking_uri)


def run_prediction(options: InferenceOptions, input_path: str) -> InferenceOutcome:
    inputs = find_inputs(input_path)                       # bad input: error before the run or the output
    frames = frames_to_predict(inputs)
    check_frames(frames)
    model = load_options_model(options)
    output = Path(options.output)
    check_output(output, options.overwrite)
    session = InferenceSession(options, model, output, layout.INFERENCE_TAGS,
                               f"predict-{time.strftime('%Y%m%d-%H%M%S')}")
    with run_status(session.close):
        session.log_params(inputs, {"input": str(input_path), "frames": len(frames)})
        results = session.run_frames(frames)
        session.finish(results)
    log.info("predicted %d frames from %d files into %s", len(results), len(inputs), output)
    return InferenceOutcome(session.tracker.run_id, session.tracker.failed, len(results), output, results)
