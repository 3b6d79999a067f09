"""Ultralytics YOLO segmentation labels: `images/N.png` with `labels/N.txt`, one polygon per line,
`class x1 y1 x2 y2 ...`, coordinates normalised to 0..1 of the frame (x = column / width, y = row / height),
class names in an optional `data.yaml` (`names:` a list or an {id: name} mapping).

The polygons of the chosen classes are filled into one binary vessel mask on each frame's own pixel grid.
Pixel centres: pixel (row r, column c) covers [c, c+1) x [r, r+1) of the frame scaled by its width and height,
and is vessel when its centre (c + 0.5, r + 0.5) lies inside a polygon; the frame's size is read from its
header when the mask is drawn. An empty label file is a frame without vessel; a missing one is a problem.
By default every class is a vessel class except one named `stenosis` (a lesion marker, as in ARCADE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coroseg.errors import InputError

TOLERANCE = 1e-3          # coordinates this far outside [0, 1] are clamped; further out is a problem
NOT_VESSEL = ("stenosis",)


@dataclass(frozen=True)
class YoloMask:
    """A frame's mask given as normalised polygons from its label file (read and checked at scan time)."""

    source: Path                                   # the label file
    image: Path                                    # the frame, whose header gives the grid
    polygons: tuple[tuple[float, ...], ...]        # x1, y1, x2, y2, ... in [0, 1]
    no_vessel: bool = False                        # an empty label file: the annotator's "no vessel here"

    def __str__(self) -> str:
        return str(self.source)

    def read(self) -> np.ndarray:
        from coroseg.data.imageio import image_size

        return fill_polygons(self.polygons, *image_size(self.image))


def fill_polygons(polygons, width: int, height: int) -> np.ndarray:
    """The union of normalised polygons as a (height, width) bool mask; a pixel is in when its centre is."""
    from skimage.draw import polygon

    mask = np.zeros((height, width), dtype=bool)
    for flat in polygons:
        xs = np.asarray(flat[0::2], dtype=np.float64) * width - 0.5     # pixel centres at integer coordinates
        ys = np.asarray(flat[1::2], dtype=np.float64) * height - 0.5
        rows, cols = polygon(ys, xs, shape=mask.shape)
        mask[rows, cols] = True
    return mask


def read_names(path: Path) -> dict[int, str] | None:
    """Class id -> name from an Ultralytics data.yaml (`names:` a list or a mapping); None without names."""
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: cannot read class names ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from exc
    names = loaded.get("names") if isinstance(loaded, dict) else None
    if names is None:
        return None
    if isinstance(names, list):
        return {i: str(name) for i, name in enumerate(names)}
    if isinstance(names, dict) and all(isinstance(k, int) and not isinstance(k, bool) for k in names):
        return {k: str(v) for k, v in names.items()}
    raise InputError(f"{path}: names must be a list or a mapping of class id to name, got {str(names)[:60]}")


def mask_classes(selection, names: dict[int, str] | None) -> tuple[ClassFilter, list[str]]:
    """Which classes form the vessel mask, and notes to say once.

    `selection` (--mask-classes) is None for the default rule (every class except one named stenosis),
    'all', or ids / data.yaml names separated by commas (a YAML list too). A token that is a whole number
    is a class id, anything else a name."""
    if selection is None:
        left_out = {i: n for i, n in (names or {}).items() if n.strip().lower() in NOT_VESSEL}
        notes = [f"labels: class {i} {n!r} is a lesion, not a vessel: left out of the masks (--mask-classes to choose)"
                 for i, n in left_out.items()]
        return ClassFilter(None, frozenset(left_out)), notes
    tokens = selection if isinstance(selection, (list, tuple)) else str(selection).split(",")
    tokens = [str(t).strip() for t in tokens if str(t).strip()]
    if [t.lower() for t in tokens] == ["all"]:
        return ClassFilter(None, frozenset()), []
    by_name = {n: i for i, n in (names or {}).items()}
    chosen = set()
    for token in tokens:
        if token.isdigit():
            chosen.add(int(token))
        elif token in by_name:
            chosen.add(by_name[token])
        else:
            known = f"data.yaml names: {', '.join(by_name)}" if by_name else "no data.yaml names; use class ids"
            raise InputError(f"--mask-classes: unknown class {token!r} ({known})")
    if not chosen:
        raise InputError("--mask-classes: no class given (ids or names separated by commas, or 'all')")
    unknown = sorted(i for i in chosen if names is not None and i not in names)
    if unknown:
        raise InputError(f"--mask-classes: class id {unknown[0]} is not in data.yaml (ids 0-{max(names, default=0)})")
    return ClassFilter(frozenset(chosen), frozenset()), []


@dataclass(frozen=True)
class ClassFilter:
    chosen: frozenset[int] | None      # None: every class ...
    left_out: frozenset[int]           # ... but these

    def __contains__(self, cls: int) -> bool:
        return (self.chosen is None or cls in self.chosen) and cls not in self.left_out


@dataclass
class Label:
    cls: int
    polygon: tuple[float, ...]


def read_labels(path: Path, names: dict[int, str] | None) -> tuple[list[Label], list[str]]:
    """A label file's polygons, and one problem per bad line ("file:line: what")."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return [], [f"{path}: cannot read label file ({exc.__class__.__name__}: {exc})"]
    labels, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        label, problem = _parse(line, names)
        if problem:
            problems.append(f"{path}:{number}: {problem}")
        else:
            labels.append(label)
    return labels, problems


def _parse(line: str, names: dict[int, str] | None) -> tuple[Label | None, str | None]:
    fields = line.split()
    try:
        cls_value = float(fields[0])
        values = [float(v) for v in fields[1:]]
    except ValueError:
        return None, f"unreadable line (expected 'class x1 y1 x2 y2 ...'): {line.strip()[:60]!r}"
    if not cls_value.is_integer() or cls_value < 0:
        return None, f"class {fields[0]!r} is not a class id (a whole number)"
    cls = int(cls_value)
    if names is not None and cls not in names:
        return None, f"unknown class id {cls} (data.yaml names ids 0-{max(names, default=0)})"
    if not all(math.isfinite(v) for v in values):
        return None, "coordinate that is not a finite number"
    if len(values) % 2:
        return None, f"odd number of coordinates ({len(values)}): a polygon is x y pairs"
    if len(values) < 6:
        return None, f"degenerate polygon: {len(values) // 2} points, at least 3 needed"
    bad = [v for v in values if v < -TOLERANCE or v > 1 + TOLERANCE]
    if bad:
        return None, f"coordinate {bad[0]:g} outside 0..1 (normalised to the frame's width and height)"
    values = [min(max(v, 0.0), 1.0) for v in values]
    xs, ys = np.asarray(values[0::2]), np.asarray(values[1::2])
    if 0.5 * abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))) == 0.0:
        return None, "degenerate polygon: zero area"
    return Label(cls, tuple(values)), None
