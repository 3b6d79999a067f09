"""`coroseg check-data`: what a data folder holds, and every problem in it, before anyone trains on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from coroseg.data.pairs import read_pair, scan_folder
from coroseg.errors import InputError


@dataclass
class DataReport:
    folder: Path
    format: str
    pairs: int = 0
    sizes: dict[tuple[int, int], int] = field(default_factory=dict)   # (width, height) -> count
    vessel_fractions: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sorted(self.sizes.items()))
        fractions = np.asarray(self.vessel_fractions) if self.vessel_fractions else np.zeros(1)
        return [
            f"folder: {self.folder}",
            f"format: {self.format}",
            f"pairs: {self.pairs}",
            f"sizes: {sizes or '-'}",
            f"vessel fraction: mean {fractions.mean():.4f}, min {fractions.min():.4f}, max {fractions.max():.4f}",
            *self.notes,
            f"problems: {len(self.problems)}",
            *(f"  {p}" for p in self.problems),
        ]


def check_data(folder: str | Path, data_format: str = "auto", mask_classes=None) -> DataReport:
    scan = scan_folder(folder, data_format, mask_classes)
    report = DataReport(scan.folder, scan.format, problems=list(scan.problems), notes=list(scan.notes))
    for pair in scan.pairs:
        try:
            image, mask = read_pair(pair)          # the same reading, and the same refusals, as train
        except InputError as exc:
            report.problems.append(str(exc))
            continue
        report.pairs += 1
        size = (image.shape[1], image.shape[0])
        report.sizes[size] = report.sizes.get(size, 0) + 1
        report.vessel_fractions.append(float(mask.mean()))
        if not mask.any() and not getattr(pair.mask, "no_vessel", False):   # an empty YOLO label file says so
            report.problems.append(f"{pair.mask}: empty mask (no vessel pixel)")
    if not scan.pairs and not scan.problems:
        report.problems.append(f"{scan.folder}: no image/mask pairs found")
    return report
