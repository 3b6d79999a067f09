"""The model contract: everything needed to rebuild a logged model and use it as it was trained.

A `ModelSpec` is written into the MLflow model's metadata when training ends and read back, checked,
by every command that loads a model. It records the network's constructor arguments, so a model logged
today is rebuilt as it was even after the defaults in models.py change; a model logged before they were
recorded gets today's defaults of its family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coroseg.config import TrainConfig
from coroseg.data.preprocess import Preprocessing
from coroseg.errors import InputError
from coroseg.training.postprocess import Postprocessing

MAX_IMAGE_SIZE = 8192          # a recorded working size above this is not a model of ours
MAX_MEMBERS = 20              # networks in an ensemble (one per cross-validation fold)
MAX_WIDTH = 1024               # any whole number in recorded constructor arguments (channels, features...)
INPUT = "float32 (N,1,H,W) grayscale frames prepared by coroseg.data.preprocess.prepare"
OUTPUT = "float32 (N,1,H,W) vessel probabilities"


@dataclass(frozen=True)
class ModelSpec:
    family: str | None                    # None: an exported graph without coroseg metadata
    architecture: dict[str, Any] = field(default_factory=dict)   # the network's constructor kwargs
    image_size: int = TrainConfig.image_size
    divisor: int = 16                     # input sides must be multiples of this
    preprocessing: Preprocessing = Preprocessing()
    postprocessing: Postprocessing = Postprocessing()
    members: int = 1                      # > 1: an ensemble of that many networks (cross-validation folds)

    @classmethod
    def of_training(cls, config: TrainConfig, postprocessing: Postprocessing | None = None,
                    members: int = 1) -> "ModelSpec":
        from coroseg.data.dataset import preprocessing_of
        from coroseg.models import architecture_of, family

        architecture = architecture_of(config.model_family, width=config.width,
                                       deep_supervision=config.deep_supervision)
        return cls(config.model_family, architecture, config.image_size,
                   family(config.model_family).divisor, preprocessing_of(config), postprocessing or Postprocessing(),
                   members)

    def build(self):
        """A freshly built `SegmentationModel` of this architecture, or the `Ensemble` of `members` of them (its
        weights are still to be loaded)."""
        from coroseg.models import Ensemble, build_model

        if self.members == 1:
            return build_model(self.family, self.architecture, self.divisor)
        return Ensemble([build_model(self.family, self.architecture, self.divisor) for _ in range(self.members)])

    def to_metadata(self) -> dict[str, Any]:
        return {
            "model_family": self.family,
            "architecture": self.architecture,
            "image_size": self.image_size,
            "divisor": self.divisor,
            "threshold": self.postprocessing.threshold,
            "min_component_fraction": self.postprocessing.min_component_fraction,
            "preprocessing": self.preprocessing.to_metadata(),
            "members": self.members,
            "input": INPUT,
            "output": OUTPUT,
        }

    @classmethod
    def from_metadata(cls, metadata: Any, where: Path) -> "ModelSpec":
        """The spec a model folder records, every value checked before anything is built from it; the one
        line of a bad value names `where` (the MLmodel file)."""
        from coroseg.models import FAMILIES, family

        if not isinstance(metadata or {}, dict):
            raise InputError(f"{where}: metadata must be a mapping, got {str(metadata)[:60]!r}")
        metadata = dict(metadata or {})
        name = metadata.get("model_family")
        if name is not None and name not in FAMILIES:
            raise InputError(f"{where}: metadata names unknown model family {name!r} (known: {', '.join(FAMILIES)})")
        size = _number(metadata, "image_size", 16, MAX_IMAGE_SIZE, where, whole=True)
        divisor = _number(metadata, "divisor", 1, 1024, where, whole=True)
        threshold = _number(metadata, "threshold", 0.0, 1.0, where)
        fraction = _number(metadata, "min_component_fraction", 0.0, 1.0, where)
        members = _number(metadata, "members", 1, MAX_MEMBERS, where, whole=True)
        preprocessing = metadata.get("preprocessing", {})
        if not isinstance(preprocessing or {}, dict):
            raise InputError(f"{where}: metadata preprocessing must be a mapping, got {preprocessing!r}")
        defaults = cls(name)
        return cls(
            family=name,
            architecture=_architecture(metadata.get("architecture"), name, where),
            image_size=int(size if size is not None else defaults.image_size),
            divisor=int(divisor if divisor is not None else (family(name).divisor if name else defaults.divisor)),
            preprocessing=Preprocessing.from_metadata(metadata),
            postprocessing=Postprocessing(
                threshold if threshold is not None else defaults.postprocessing.threshold,
                fraction if fraction is not None else defaults.postprocessing.min_component_fraction),
            members=int(members or 1),
        )


def _number(metadata: dict, key: str, low: float, high: float, where: Path, whole: bool = False) -> float | None:
    if key not in metadata:
        return None
    value = metadata[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise InputError(f"{where}: metadata {key} must be a number in [{low}, {high}], got {value!r}")
    if whole and value != int(value):
        raise InputError(f"{where}: metadata {key} must be a whole number, got {value!r}")
    return float(value)


def _architecture(recorded: Any, name: str | None, where: Path) -> dict[str, Any]:
    """Recorded constructor kwargs: only those the family has, input and output as coroseg's, sizes bounded
    (a model folder from anyone must not make us build a network of any size)."""
    from coroseg.models import IO_KWARGS, family

    if recorded is None:
        return {}
    if not isinstance(recorded, dict) or name is None:
        raise InputError(f"{where}: metadata architecture must be a mapping of a known model family, got "
                         f"{str(recorded)[:60]!r}")
    known = family(name).architecture
    unknown = sorted(set(recorded) - set(known))
    if unknown:
        raise InputError(f"{where}: metadata architecture has arguments {name} does not take: {', '.join(unknown)}")
    for key, value in IO_KWARGS.items():
        if recorded.get(key, value) != value:
            raise InputError(f"{where}: metadata architecture {key} must be {value}, got {recorded[key]!r}")
    for key, value in recorded.items():
        if not _bounded(value):
            raise InputError(f"{where}: metadata architecture {key} is out of bounds (whole numbers up to "
                             f"{MAX_WIDTH}, at most 16 items): {str(value)[:60]!r}")
    return dict(recorded)


def _bounded(value: Any, depth: int = 0) -> bool:
    if depth > 3:
        return False
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, (int, float)):
        return math.isfinite(value) and abs(value) <= MAX_WIDTH
    if isinstance(value, (list, tuple)):
        return len(value) <= 16 and all(_bounded(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return len(value) <= 16 and all(isinstance(k, str) and _bounded(v, depth + 1) for k, v in value.items())
    return False
