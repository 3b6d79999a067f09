"""Open an MLflow store safely when several coroseg processes start at once.

MLflow creates a new SQLite store by running its alembic migrations in whichever process opens it first,
without a lock: four `coroseg train` started together into a new file all run them, all fail, and the
file is left half-migrated. Here the first opening happens under a file lock beside the database, and the
store MLflow builds then stays in MLflow's own cache, so every later call of this process reuses it.
"""

from __future__ import annotations

import threading
from pathlib import Path

from filelock import FileLock

# Migrating a new store takes seconds; a lock held far longer belongs to a hung process, and then
# tracking fails (reported as any tracking failure) rather than the command waiting forever.
LOCK_TIMEOUT_S = 300

_prepared: set[str] = set()
_prepared_lock = threading.Lock()


def resolved_tracking_uri(tracking_uri: str | None) -> str:
    """The URI MLflow will use: the given one, else MLFLOW_TRACKING_URI, else MLflow's default."""
    from mlflow.tracking._tracking_service.utils import _resolve_tracking_uri

    return _resolve_tracking_uri(tracking_uri)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite URI (relative to the working directory, as MLflow reads it)."""
    if not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    if not database or database == ":memory:":
        return None
    return Path(database)


def prepare_store(tracking_uri: str | None) -> None:
    """Create (migrate) the store of `tracking_uri` once, under a file lock if it is a SQLite file.

    Cheap after the first call for a URI in this process; other stores are left to MLflow. Raises what
    opening the store raises (MlflowException, SQLAlchemy's errors, filelock.Timeout, OSError), which
    callers report as a tracking failure.
    """
    uri = resolved_tracking_uri(tracking_uri)
    with _prepared_lock:
        if uri in _prepared:
            return
        database = sqlite_path(uri)
        if database is not None:
            _open_under_lock(uri, database)
        _prepared.add(uri)


def _open_under_lock(uri: str, database: Path) -> None:
    # Keyed exactly as MLflow's later calls key it (the resolved URI, no artifact URI), so the instance
    # built here is the one the run uses. The model-registry store needs nothing more: it migrates only
    # when tables are missing, and after this they are all there.
    from mlflow.tracking._tracking_service.utils import _get_store

    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{database}.lock", timeout=LOCK_TIMEOUT_S):
        _get_store(uri)
