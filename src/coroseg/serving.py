"""The logged model as MLflow serves it: the whole predictor, raw frames in, masks out.

Every model coroseg logs is an MLflow pyfunc whose loader is this module: `mlflow.pyfunc.load_model(uri)`
and `mlflow models serve -m uri --env-manager local` give the same masks as `coroseg predict` (same
preprocessing, field of view, sliding window, threshold and small-piece removal, all from the model's
spec). The weights are safetensors, loaded by coroseg's own loader: nothing is unpickled.

Input: raw grey frames as read from files (uint8, uint16 or float): an (N,H,W) or (N,1,H,W) array, one
(H,W) frame, or frames of different sizes as a 1-D object array (in JSON: nested lists of any shapes). Output: the same layout, 0/1 masks (uint8) of each
frame's own size, or float32 probabilities with `params={"output": "probability"}`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

OUTPUTS = ("mask", "probability")


def _load_pyfunc(data_path: str) -> "Pipeline":
    """MLflow's entry point: `data_path` is the model's weights file, in `<model>/data/`."""
    import torch

    from coroseg.inference.model_loading import load_model

    folder = Path(data_path).resolve().parent.parent
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return Pipeline(load_model(str(folder), device))


class Pipeline:
    def __init__(self, model) -> None:
        from coroseg.inference.predictor import DEFAULT_TTA, Predictor

        self.predictor = Predictor(model, tta=DEFAULT_TTA)          # as `coroseg predict` does

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        output = (params or {}).get("output", "mask")
        if output not in OUTPUTS:
            raise ValueError(f"params output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        frames, restore = _frames(model_input)
        predictions = self.predictor.predict(frames)
        results = [p.mask.astype(np.uint8) if output == "mask" else p.probabilities for p in predictions]
        return restore(results)


def _frames(model_input: Any):
    """The (H,W) float32 frames of an input, and how to give results back in the input's layout."""
    from coroseg.data.imageio import gray_float

    if hasattr(model_input, "to_numpy"):            # a DataFrame (MLflow's dataframe_split requests)
        model_input = model_input.to_numpy()
    if not isinstance(model_input, list):
        array = np.asarray(model_input)
        if array.dtype == object and array.size and isinstance(array.flat[0], (list, tuple, np.ndarray)):
            model_input = list(array) if array.ndim == 1 else array.tolist()   # frames of several sizes
        elif array.dtype == object:                 # JSON numbers (a REST request): their own dtype back
            array = np.array(array.tolist())
    if isinstance(model_input, list):
        return [gray_float(_one_frame(np.array(np.asarray(f).tolist()), i)) for i, f in enumerate(model_input)], list
    if array.ndim == 2:                              # one frame
        return [gray_float(array)], lambda r: r[0]
    if array.ndim == 4 and array.shape[1] == 1:
        return [gray_float(f[0]) for f in array], lambda r: np.stack(r)[:, None]
    if array.ndim == 3:
        return [gray_float(f) for f in array], lambda r: np.stack(r)
    raise ValueError(f"expected grey frames as (N,H,W), (N,1,H,W), one (H,W) frame or a list of frames, "
                     f"got shape {array.shape}")


def _one_frame(frame: np.ndarray, index: int) -> np.ndarray:
    frame = frame[0] if frame.ndim == 3 and frame.shape[0] == 1 else frame
    if frame.ndim != 2:
        raise ValueError(f"frame {index}: expected a 2-D grey frame, got shape {frame.shape}")
    return frame
