"""Training configuration: the one place where defaults live.

Resolution order is defaults < YAML file (``--config``) < command-line flags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from coroseg.data.pairs import FORMATS
from coroseg.errors import InputError, first_line
from coroseg.training.losses import LOSSES


@dataclass
class TrainConfig:
    # data
    data: str = "synthetic"             # "synthetic" or a folder of image/mask pairs
    data_format: str = "auto"           # one of data.pairs.FORMATS
    mask_classes: str | None = None     # yolo labels: class ids/names forming the mask; None: all but stenosis
    synthetic_count: int = 48           # frames generated when data == "synthetic"
    synthetic_size: int = 300           # side of generated frames, like the CIMAT frames
    val_fraction: float = 0.2
    folds: int | None = None            # None (auto): fold_count below; > 1: K-fold cross-validation, a nested
                                        # run per fold, the folds' ensemble as the model
    image_size: int | str = 256         # frames are resized to this square side; "native": the first frame's own
                                        # side rounded up to the network's divisor (resolved once the data are read)
    augment: bool = True
    xray_augment: bool = False          # X-ray attenuation-domain changes on top (data/augment.py; README, Quality)
    field_of_view: bool = True          # detect each frame's FOV; outside it: no loss, no metric, background
    clahe: bool = False                 # contrast-limited histogram equalisation (data/preprocess.py)
    # model
    model_family: str = "unet"
    width: int = 16                     # channels of the network's first level (models.DEFAULT_WIDTH)
    deep_supervision: bool = False      # dynunet: its coarser decoder levels' outputs trained too (models.py)
    init: str | None = "auto"           # auto | none | a built-in start (arcade-v2) | a model URI (fine-tuning)
    # optimisation
    loss: str = "dice_ce"               # one of training.losses.LOSSES
    epochs: int | None = None           # None (auto): schedule below; 20 leaves real-data Dice ~0.03 lower
    batch_size: int = 4
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    patience: int | None = None         # epochs without a better val Dice before stopping; None (auto): schedule
    ema_epochs: float = 0.0             # > 0: validate and keep a moving average of the weights, time constant in
                                        # epochs (trainer._weight_average); 0: the weights as trained
    seed: int = 0
    device: str = "auto"                # auto | cpu | cuda
    compile: str = "auto"               # torch.compile + channels_last for training: auto (on CUDA) | yes | no
    loader_workers: int | None = None   # processes reading batches from the frame cache; None: data/batches.py
    # record
    val_samples: int = 4                # validation overlays saved per epoch
    output_dir: str = "coroseg_runs"    # local record of every run (kept even when tracking fails)
    tracking: bool = True
    tracking_uri: str | None = None
    experiment: str = "coroseg"
    run_name: str | None = None
    system_metrics: bool = True
    register: str | None = None         # registered model name: each trained model becomes a version of it
    preset: str | None = None           # a name of PRESETS: its values replaced these defaults (recorded as asked)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --folds auto: on a small real data set the mean of 5 fold models beat the one model of a single split in every
# fold of a nested cross-validation on CIMAT (+0.013 Dice out of fold, README "Quality"), and 5 trainings of a
# small set stay short (40 CIMAT frames: about 6 min on 2 CPU cores; 200 ARCADE frames would take 30).
AUTO_FOLDS = 5
AUTO_FOLDS_MAX_FRAMES = 100


def fold_count(config: TrainConfig, count: int) -> int:
    """The folds asked for; auto: AUTO_FOLDS for real data of 2 * AUTO_FOLDS to AUTO_FOLDS_MAX_FRAMES pairs
    (each fold validates at least 2), else 1 (synthetic frames: the demo, pretraining)."""
    if config.folds is not None:
        return config.folds
    small = 2 * AUTO_FOLDS <= count <= AUTO_FOLDS_MAX_FRAMES
    return AUTO_FOLDS if small and config.data != "synthetic" else 1


# The epoch schedule (`epochs`, `patience` auto). One model trains 160 epochs, stopping after 50 without a better val
# Dice: out of fold on ARCADE 0.788 against 0.778 with 80 and 25, better in 4 of 5 folds (README "Quality").
# Each network of a fold ensemble trains 80, stopping after 25: the schedule its gain on CIMAT was measured with,
# and 5 such trainings of a small set stay short.
ONE_SPLIT_SCHEDULE = (160, 50)
PER_FOLD_SCHEDULE = (80, 25)


def epoch_schedule(config: TrainConfig, folds: int) -> tuple[int, int]:
    """(epochs, patience): those asked for, auto ones resolved for a training of `folds` folds (1: one split)."""
    epochs, patience = PER_FOLD_SCHEDULE if folds > 1 else ONE_SPLIT_SCHEDULE
    return (epochs if config.epochs is None else config.epochs,
            patience if config.patience is None else config.patience)


# --preset: named option values that replace the defaults; a --config file and flags still override them.
# best: the best recipe measured (README "Quality"), which is now the default itself: its start, arcade-v2, became
# --init auto's. Nested cross-validation of the fold ensemble on CIMAT measured nothing better: the long schedule
# (160 epochs, patience 50) from the same start scored 0.795 against 0.794 (+0.000 to +0.005 in 4 folds, -0.005
# in one) for 1.7 times the time. The name stays so that scripts and config files naming it run as before.
NATIVE = "native"
PRESETS: dict[str, dict[str, Any]] = {"best": {}}


# A word or a whole number of at least some least: auto (None in the config, resolved once the data are known)
# or native (resolved when the data are read).
_WORD_OR_NUMBER = {"folds": ("auto", 1), "epochs": ("auto", 1), "patience": ("auto", 1), "image_size": (NATIVE, 32)}
_CHOICES = {"device": ("auto", "cpu", "cuda"), "data_format": FORMATS, "loss": tuple(LOSSES),
            "compile": ("auto", "yes", "no")}
_POSITIVE = ("synthetic_count", "synthetic_size", "batch_size", "width")


def _validate(config: TrainConfig) -> TrainConfig:
    for name, (word, least) in _WORD_OR_NUMBER.items():
        value = getattr(config, name)
        if value == word or (value is None and word == "auto"):
            setattr(config, name, None if word == "auto" else word)
        elif type(value) is not int or value < least:
            raise InputError(f"config: {name} must be {word} or a whole number of at least {least}, got {value!r}")
    for name, allowed in _CHOICES.items():
        if getattr(config, name) not in allowed:
            raise InputError(f"config: {name} must be one of {', '.join(allowed)}, got {getattr(config, name)!r}")
    for name in _POSITIVE:
        if getattr(config, name) < 1:
            raise InputError(f"config: {name} must be at least 1, got {getattr(config, name)}")
    if not 0.0 < config.val_fraction < 1.0:
        raise InputError(f"config: val_fraction must be between 0 and 1, got {config.val_fraction}")
    if config.width % 4 or config.width > 128:
        raise InputError(f"config: width must be a multiple of 4 up to 128, got {config.width}")
    if not config.ema_epochs >= 0:                    # NaN too
        raise InputError(f"config: ema_epochs must be a number of at least 0, got {config.ema_epochs!r}")
    if config.loader_workers is not None and config.loader_workers < 0:
        raise InputError(f"config: loader_workers must be at least 0, got {config.loader_workers}")
    if config.preset is not None and config.preset not in PRESETS:
        raise InputError(f"config: preset must be one of {', '.join(PRESETS)}, got {config.preset!r}")
    return config


def native_side(shape: tuple[int, ...], divisor: int) -> int:
    """The side `native` stands for: a frame's longer side rounded up to the network's divisor."""
    return -(-max(shape[-2:]) // divisor) * divisor


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: cannot read configuration ({first_line(exc)})") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise InputError(f"{path}: configuration must be a mapping of option: value")
    return loaded


def _coerce(name: str, value: Any, default: Any, origin: str) -> Any:
    """Check a YAML value against the type of its default (YAML gives ints where floats are meant)."""
    if value is None or default is None or (name == "image_size" and value == NATIVE):
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise InputError(f"{origin}: {name} must be a {type(default).__name__}, got {value!r}")
    return value


def resolve(config_file: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the preset (from the flags, else the YAML file), then the YAML file, then the flags that
    were given (None means 'not given')."""
    known = {f.name: f.default for f in fields(TrainConfig)}
    values: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        for name, value in _read_yaml(path).items():
            if name not in known:
                raise InputError(f"{path}: unknown option {name!r} (known: {', '.join(known)})")
            values[name] = _coerce(name, value, known[name], str(path))
    values.update({k: v for k, v in overrides.items() if v is not None})
    preset = PRESETS.get(values.get("preset"), {})   # an unknown name: _validate says so
    return _validate(TrainConfig(**{**preset, **values}))


def to_yaml(values: dict[str, Any]) -> str:
    return yaml.safe_dump(values, sort_keys=False)
