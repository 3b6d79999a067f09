"""What a run ran on: library versions, device, host, and the code's git commit."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch


def _git_commit() -> str | None:
    """Commit of the coroseg code itself, when it runs from a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def package_version(name: str) -> str | None:
    """An installed package's version, read without importing it (`import mlflow` alone costs seconds)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict[str, Any]:
    import psutil

    import coroseg

    return {
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "monai_version": package_version("monai"),
        "mlflow_version": package_version("mlflow") or package_version("mlflow-skinny"),
        "coroseg_version": coroseg.__version__,
        "device": str(device),
        "device_name": device_name(device),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
    }


def environment_params(env: dict[str, Any]) -> dict[str, Any]:
    """The environment as params, prefixed so they never clash with config names."""
    return {f"env_{k}": v for k, v in env.items()}


def resolve_device(choice: str) -> torch.device:
    from coroseg.errors import InputError

    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(choice)
