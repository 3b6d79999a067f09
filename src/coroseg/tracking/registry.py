"""`train --register NAME`: each trained model becomes a version of NAME in MLflow's model registry.

The alias `champion` names the version to use (`models:/NAME@champion`). A new version takes it only when its
validation Dice beats the champion's; otherwise it is the `challenger`, for a person to look at. The Dice is
the version's `val_dice` tag, so the comparison needs nothing but the registry.
"""

from __future__ import annotations

from typing import Any

CHAMPION, CHALLENGER = "champion", "challenger"
DICE_TAG = "val_dice"


def register(client: Any, run_id: str, entry: dict[str, Any]) -> str:
    """Register the run's model (a journal `register` entry) and move the aliases; what was decided, and why."""
    from coroseg.tracking.sender import run_model

    name, tags = entry["name"], entry["tags"]
    model = run_model(client, run_id, entry["model"])
    if model is None:
        raise RuntimeError(f"run {run_id} has no logged model {entry['model']!r} to register yet")
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    _ensure_registered_model(client, name)
    # MLflow resolves the version's `models:/<id>` source through the global tracking URI, not the client's:
    # pointed at this store for the call (a process may have another one set, or none).
    with _use_tracking_uri(client.tracking_uri):
        version = client.create_model_version(name, source=f"models:/{model.model_id}", run_id=run_id,
                                              tags={**tags, "run_id": run_id}, model_id=model.model_id)
    return _place(client, name, version.version, float(tags[DICE_TAG]))


def _ensure_registered_model(client: Any, name: str) -> None:
    from coroseg.tracking.sender import already_exists

    try:
        client.create_registered_model(name)
    except Exception as exc:
        if not already_exists(exc):
            raise


def _place(client: Any, name: str, version: str, dice: float) -> str:
    champion = _champion(client, name)
    if champion is None or dice > champion[1]:
        client.set_registered_model_alias(name, CHAMPION, version)
        why = (f"val Dice {dice:.4f} beats {champion[1]:.4f} of version {champion[0]}" if champion
               else "the first version with a val Dice")
        return f"registered {name} version {version} as {CHAMPION}: {why}"
    client.set_registered_model_alias(name, CHALLENGER, version)
    return (f"registered {name} version {version} as {CHALLENGER}: val Dice {dice:.4f} does not beat "
            f"{champion[1]:.4f} of {CHAMPION} version {champion[0]}")


def _champion(client: Any, name: str) -> tuple[str, float] | None:
    """The champion's version and Dice; None when there is none (or it has no Dice to beat)."""
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    try:
        return current.version, float(current.tags[DICE_TAG])
    except (KeyError, ValueError):
        return None
