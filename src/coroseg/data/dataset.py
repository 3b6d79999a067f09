"""The training data: frames and masks from a source, checked, prepared (data/preprocess.py), resized,
split; held on disk in the frame cache (frame_store.py), not in memory.

Frames are read and prepared one at a time into the cache file, so loading 2,000 frames needs no more memory
than loading 200; the next training on the same data, settings and code finds the file and prepares nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from coroseg.config import NATIVE, TrainConfig, fold_count, native_side
from coroseg.data.frame_store import FrameFile, FrameWriter, cache_root, cached, code_digest
from coroseg.data.imageio import read_gray
from coroseg.data.pairs import Scan, announce, checked_scan, read_pair
from coroseg.data.preprocess import Preprocessing, prepare
from coroseg.errors import InputError
from coroseg.host_threads import host_threads, in_order
from coroseg.models import family

log = logging.getLogger("coroseg")


@dataclass
class Frames:
    """Some prepared frames of a data set: rows of its cache file, in order, with their names. Masks hold no
    vessel outside the field of view (there is nothing to see there)."""

    file: FrameFile
    rows: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, positions: np.ndarray) -> "Frames":
        return Frames(self.file, self.rows[positions], [self.names[i] for i in positions])

    def records(self, positions: Iterable[int]) -> np.ndarray:
        """(n,3,S,S) uint8 records (image, mask, field of view) of these frames."""
        return self.file.read(self.rows[np.asarray(list(positions), dtype=np.int64)])

    def masks(self) -> np.ndarray:
        """Every frame's mask, (N,S,S) bool."""
        return self.file.plane("mask", self.rows) > 0

    def fovs(self) -> np.ndarray:
        return self.file.plane("fov", self.rows) > 0


@dataclass
class TrainingData:
    train: Frames
    val: Frames
    source: str
    digest: str          # sha256 of every frame and mask as read, in order
    example: np.ndarray  # the first validation frame, uint8 as a user would send it: the model's input example


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N,1,H,W) frames to `size`, antialiased so thin vessels are not aliased away when shrinking."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return (resize_image(mask.float(), size) > 0.5).float()


def add_to_digest(h, image: np.ndarray, mask: np.ndarray) -> None:
    h.update(np.ascontiguousarray(image).tobytes())
    h.update(np.packbits(mask).tobytes())


def frames_digest(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> str:
    """sha256 of every (frame, mask) as read, in order: what a run trained or was scored on."""
    h = hashlib.sha256()
    for image, mask in pairs:
        add_to_digest(h, image, mask)
    return h.hexdigest()


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic in (count, val_fraction, seed); at least one frame on each side."""
    order = np.random.default_rng(seed).permutation(count)
    n_val = min(max(1, round(count * val_fraction)), count - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def fold_indices(count: int, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """K-fold (train, val) index pairs, deterministic in (count, folds, seed); every frame is validated once."""
    order = np.random.default_rng(seed).permutation(count)
    chunks = np.array_split(order, folds)
    return [(np.sort(np.concatenate(chunks[:i] + chunks[i + 1:])), np.sort(chunk)) for i, chunk in enumerate(chunks)]


def splits(config: TrainConfig, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """One train/validation split, or one per fold when there are folds (`fold_count`)."""
    folds = fold_count(config, count)
    if folds > 1:
        if count < folds:
            raise InputError(f"{config.data}: {folds} folds need at least {folds} pairs, found {count}")
        return fold_indices(count, folds, config.seed)
    return [split_indices(count, config.val_fraction, config.seed)]


def preprocessing_of(config: TrainConfig) -> Preprocessing:
    return Preprocessing(field_of_view=config.field_of_view, clahe=config.clahe)


class _Folder:
    """Frames and masks of a checked folder, read one pair at a time."""

    def __init__(self, config: TrainConfig) -> None:
        self.scan: Scan = checked_scan(config.data, config.data_format, config.mask_classes)
        self.names = [pair.image.name for pair in self.scan.pairs]
        self.description = str(Path(config.data).resolve())

    def identify(self, h) -> None:
        """Everything the frames depend on, into the hash `h`: the files' bytes, and polygons as scanned."""
        for pair in self.scan.pairs:
            h.update(pair.image.name.encode())
            h.update(pair.image.read_bytes())
            h.update(pair.mask.read_bytes() if isinstance(pair.mask, Path) else repr(pair.mask).encode())

    def pairs(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return (read_pair(pair) for pair in self.scan.pairs)

    def frame(self, index: int) -> np.ndarray:
        return read_gray(self.scan.pairs[index].image)

    def check(self, empty: list[int]) -> None:
        """No vessel anywhere means a misread data set, not a lesson: refuse. Some empty frames can be real
        (a cine before the contrast arrives), so they are trained on, and said."""
        masks = [self.scan.pairs[i].mask for i in empty]
        if len(empty) == len(self.names):
            raise InputError(f"{self.scan.folder}: every mask is empty (no vessel pixel), e.g. {masks[0]}; "
                             "nothing to learn from (coroseg check-data lists the masks)")
        if empty:
            log.warning("%s: %d of %d masks are empty (no vessel pixel), e.g. %s", self.scan.folder, len(empty),
                        len(self.names), masks[0])
        announce(self.scan)


class _Synthetic:
    """Generated frames (data/synthetic.py), drawn one at a time."""

    def __init__(self, config: TrainConfig) -> None:
        self.count, self.size, self.seed = config.synthetic_count, config.synthetic_size, config.seed
        self.names = [f"synthetic_{i}" for i in range(1, self.count + 1)]
        self.description = f"synthetic(count={self.count}, size={self.size}, seed={self.seed})"

    def identify(self, h) -> None:
        h.update(self.description.encode())

    def pairs(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return (self._pair(i) for i in range(len(self.names)))

    def _pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        from coroseg.data.synthetic import synth_pair

        image, mask = synth_pair(self.seed * 100003 + index + 1, self.size)
        return image.astype(np.float32) / 255.0, mask.astype(bool)

    def frame(self, index: int) -> np.ndarray:
        return self._pair(index)[0]

    def check(self, empty: list[int]) -> None:
        pass


def _prepared(image: np.ndarray, mask: np.ndarray, settings: Preprocessing,
              size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame as the network trains on it: (input, mask inside the field of view, field of view) at size²."""
    prepared, fov = prepare(image, settings)
    side = (size, size)

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32))[None, None]
    return (resize_image(tensor(prepared), side)[0, 0].numpy(), resize_mask(tensor(mask & fov), side)[0, 0].numpy() > 0,
            resize_mask(tensor(fov), side)[0, 0].numpy() > 0)


def _frame_file(source, config: TrainConfig) -> tuple[FrameFile, dict, str]:
    """The data's cache file: found, or built here (frames prepared in threads, written in order); and a line
    saying which."""
    settings = preprocessing_of(config)
    h = hashlib.sha256(code_digest().encode())
    h.update(json.dumps({"size": config.image_size, **asdict(settings)}, sort_keys=True).encode())
    source.identify(h)
    path = cache_root() / "frames" / f"{h.hexdigest()[:40]}.u8"
    if (found := cached(path)) is not None:
        return *found, f"frame cache: {found[0].count} prepared frames from {path}"
    started, digest, empty = time.perf_counter(), hashlib.sha256(), []
    try:
        writer = FrameWriter(path, config.image_size)
    except OSError as e:
        raise InputError(f"{path.parent}: cannot write the frame cache ({e.strerror}); set COROSEG_CACHE_DIR "
                         "to a writable folder") from e

    def prepared(pair: tuple[np.ndarray, np.ndarray]):
        return pair, _prepared(*pair, settings, config.image_size)

    try:
        threads = host_threads(spare=0)     # reading and writing here cost a seventh of preparing
        with ThreadPoolExecutor(threads) as pool:
            done = tqdm(in_order(pool, prepared, source.pairs(), ahead=2 * threads), total=len(source.names),
                        desc="preparing frames", unit="frame", leave=False, file=sys.stderr,
                        disable=not sys.stderr.isatty())
            for i, ((image, mask), records) in enumerate(done):
                add_to_digest(digest, image, mask)
                if not mask.any():
                    empty.append(i)
                writer.add(*records)
        metadata = {"digest": digest.hexdigest(), "empty": empty, "names": source.names}
        file = writer.commit(metadata)
    except BaseException:
        writer.abandon()
        raise
    seconds = time.perf_counter() - started
    return file, metadata, f"frame cache: {file.count} frames prepared in {seconds:.1f} s into {path}"


def _load(config: TrainConfig) -> tuple[_Folder | _Synthetic, Frames, str]:
    """The source, all its prepared frames, and the digest of the frames as read."""
    source = _Synthetic(config) if config.data == "synthetic" else _Folder(config)
    if len(source.names) < 2:
        raise InputError(f"{config.data}: need at least 2 image/mask pairs to train and validate, "
                         f"found {len(source.names)}")
    if config.image_size == NATIVE:                   # recorded as taken, like the folds
        config.image_size = native_side(source.frame(0).shape, family(config.model_family).divisor)
    file, metadata, note = _frame_file(source, config)
    source.check(metadata["empty"])                   # an error stays one line: said before the note
    log.info("%s", note)
    return source, Frames(file, np.arange(file.count), source.names), metadata["digest"]


def all_frames(config: TrainConfig) -> Frames:
    """Every prepared frame of the data, unsplit (benchmarks that split it their own way)."""
    return _load(config)[1]


def load_training_data(config: TrainConfig) -> list[TrainingData]:
    """The data of each split (one, or one per cross-validation fold)."""
    source, frames, digest = _load(config)
    return [TrainingData(frames.subset(t), frames.subset(v), source.description, digest,
                         _as_uint8(source.frame(v[0])))
            for t, v in splits(config, len(frames))]


def _as_uint8(frame: np.ndarray) -> np.ndarray:
    return np.round(np.clip(frame, 0.0, 1.0) * 255).astype(np.uint8)
