"""Read a finished run back from MLflow through its client: params, tags, metrics, recorded artifacts.

What `coroseg reproduce` starts from. Only `MlflowClient` calls (no fluent API, no active run); every failure
to read becomes one InputError line naming the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from coroseg.errors import InputError, first_line
from coroseg.tracking.redact import redact_text
from coroseg.tracking.sender import PARENT_TAG
from coroseg.tracking.store import prepare_store, resolved_tracking_uri, sqlite_path


@dataclass(frozen=True)
class StoredRun:
    run_id: str
    run_name: str
    experiment: str             # the experiment's name
    status: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]   # the last value of each

    @property
    def parent_run_id(self) -> str | None:
        return self.tags.get(PARENT_TAG)


class RunReader:
    """One store: `--tracking-uri`, else MLFLOW_TRACKING_URI, else MLflow's default."""

    def __init__(self, tracking_uri: str | None) -> None:
        from mlflow import MlflowClient

        uri = resolved_tracking_uri(tracking_uri)
        database = sqlite_path(uri)
        if database is not None and not database.is_file():    # MLflow would create an empty store here
            raise InputError(f"no store at {database}; name the store that holds the run with --tracking-uri "
                             "or MLFLOW_TRACKING_URI")
        self.uri = uri
        try:
            prepare_store(tracking_uri)
        except Exception as exc:  # noqa: BLE001 - MLflow, SQLAlchemy, filelock: all mean 'cannot open it'
            raise InputError(f"{redact_text(uri)}: cannot open the tracking store ({first_line(exc)})") from exc
        self.client = MlflowClient(tracking_uri)

    def run(self, run_id: str) -> StoredRun:
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
            experiment = self.client.get_experiment(run.info.experiment_id).name
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise InputError(f"run {run_id}: no such run in {redact_text(self.uri)}") from exc
            raise InputError(f"run {run_id}: cannot read it ({first_line(exc)})") from exc
        except Exception as exc:  # noqa: BLE001 - a dead server, a broken store: one line, not a trace
            raise InputError(f"run {run_id}: cannot read it ({first_line(exc)})") from exc
        return StoredRun(run.info.run_id, run.info.run_name, experiment, run.info.status, dict(run.data.params),
                         dict(run.data.tags), dict(run.data.metrics))

    def children(self, parent: StoredRun) -> list[StoredRun]:
        """The runs nested under `parent` (cross-validation folds), by name."""
        experiment = self.client.get_experiment_by_name(parent.experiment).experiment_id
        found = self.client.search_runs([experiment], filter_string=f"tags.`{PARENT_TAG}` = '{parent.run_id}'")
        return sorted((self.run(r.info.run_id) for r in found), key=lambda r: r.run_name)

    def download(self, run_id: str, artifact_path: str, folder: Path) -> Path:
        """One artifact of the run, copied into `folder`."""
        try:
            return Path(self.client.download_artifacts(run_id, artifact_path, dst_path=str(folder)))
        except Exception as exc:  # noqa: BLE001 - not found, or a store that fails: either way it is missing
            raise InputError(f"run {run_id}: cannot read its {artifact_path} ({first_line(exc)}); a run recorded "
                             "while the server was out sends it with `coroseg sync`") from exc

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) of every step of a metric, the last value of a step logged twice."""
        values = {m.step: m.value for m in sorted(self.client.get_metric_history(run_id, key),
                                                  key=lambda m: (m.step, m.timestamp))}
        return sorted(values.items())
