"""Journal entries into MLflow: the calls the background uploader and `coroseg sync` both make.

Only `MlflowClient` methods, never the fluent API: several runs may be sent from one process (folds, tests)
and none may pick up another's "active run".
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from coroseg.tracking.journal import VALUE_KINDS

# MLflow's limits for one log_batch call.
_MAX_METRICS, _MAX_PARAMS, _MAX_TAGS = 1000, 100, 100
PARAM_VALUE_LIMIT = 6000   # MLflow rejects longer param values
PARENT_TAG = "mlflow.parentRunId"    # how MLflow nests a run without the fluent API
ORIGINAL_RUN_TAG = "coroseg.original_run_id"
# Refusals that no retry can change (a param logged again with another value, a malformed key): the
# entries are set aside, reported, and not tried again.
REJECTED_CODES = frozenset({"INVALID_PARAMETER_VALUE"})


def ms(seconds: float) -> int:
    return int(seconds * 1000)


def is_rejection(exc: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    if isinstance(exc, FileNotFoundError):      # the record lost a file: no retry brings it back
        return True
    return isinstance(exc, MlflowException) and exc.error_code in REJECTED_CODES


def resolve_experiment_id(client: Any, name: str) -> str:
    """The id of experiment `name`, created if missing.

    Not `mlflow.set_experiment`: when another process creates the experiment between its lookup and its
    create, it returns without activating it, and the run lands in "Default".
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        return client.get_experiment_by_name(name).experiment_id   # another process created it just now


def create_run(client: Any, start: dict[str, Any], experiment: str, parent_run_id: str | None,
               extra_tags: dict[str, str] | None = None) -> str:
    """A new run from a journal's start entry; its id."""
    from mlflow.tracking.context import registry as context_registry

    tags = context_registry.resolve_tags({**start.get("tags", {}), **(extra_tags or {})})  # user, source, git
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    run = client.create_run(resolve_experiment_id(client, experiment), start_time=ms(start["time"]), tags=tags,
                            run_name=start.get("run_name"))
    return run.info.run_id


def run_exists(client: Any, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def _value_batches(entries: list[dict[str, Any]]):
    """MLflow entities of params/metrics/tags entries, cut into calls within MLflow's limits."""
    from mlflow.entities import Metric, Param, RunTag

    metrics = [Metric(k, float(v), ms(e["time"]), e.get("step") or 0)
               for e in entries if e["kind"] == "metrics" for k, v in e["metrics"].items()]
    params = [Param(k, str(v)[:PARAM_VALUE_LIMIT]) for e in entries if e["kind"] == "params"
              for k, v in e["params"].items()]
    params = list({p.key: p for p in params}.values())   # a key given twice in one batch is refused
    tags = list({k: RunTag(k, str(v)) for e in entries if e["kind"] == "tags" for k, v in e["tags"].items()}.values())
    while metrics or params or tags:
        yield metrics[:_MAX_METRICS], params[:_MAX_PARAMS], tags[:_MAX_TAGS]
        metrics, params, tags = metrics[_MAX_METRICS:], params[_MAX_PARAMS:], tags[_MAX_TAGS:]


def send_values(client: Any, run_id: str, entries: list[dict[str, Any]]) -> None:
    for metrics, params, tags in _value_batches(entries):
        client.log_batch(run_id, metrics=metrics, params=params, tags=tags)


def send_artifact(client: Any, run_id: str, record_dir: Path, entry: dict[str, Any]) -> None:
    client.log_artifact(run_id, str(record_dir / entry["path"]), entry["artifact_dir"])


def send_model(client: Any, run_id: str, record_dir: Path, entry: dict[str, Any]) -> None:
    """The MLflow model saved in the record becomes the run's LoggedModel `name`, so that
    `runs:/<run_id>/<name>` loads it; once per run, however often this is called."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    name = entry["name"]
    experiment_id = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models([experiment_id], filter_string=f"name = '{name}'")
    if any(m.source_run_id == run_id and m.status == LoggedModelStatus.READY for m in found):
        return                                            # sent before; its mark was lost
    logged = client.create_logged_model(experiment_id, name=name, source_run_id=run_id)
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    with tempfile.TemporaryDirectory() as tmp:
        # The MLmodel file names its run and model id, as mlflow.pytorch.log_model writes it.
        folder = Path(tmp) / name
        shutil.copytree(record_dir / entry["path"], folder)
        mlmodel = Model.load(str(folder / "MLmodel"))
        mlmodel.run_id, mlmodel.model_id, mlmodel.model_uuid = run_id, logged.model_id, logged.model_id
        mlmodel.artifact_path = logged.artifact_location
        mlmodel.save(str(folder / "MLmodel"))
        client.log_model_artifacts(logged.model_id, str(folder))
    client.finalize_logged_model(logged.model_id, "READY")


def send_run_state(client: Any, run_id: str, entry: dict[str, Any]) -> None:
    if entry["kind"] == "finish":
        client.set_terminated(run_id, status=entry["status"], end_time=ms(entry["time"]))
    else:   # resume: the run carries on
        client.update_run(run_id, status="RUNNING")


def send_entries(client: Any, run_id: str, record_dir: Path, entries: list[dict[str, Any]],
                 mark: Callable[[list[int], str | None], None]) -> None:
    """Send `entries` in journal order, calling `mark(seqs, rejected)` after each call that is done.

    Params, metrics and tags that follow each other go in one batch; artifacts go file by file. A refusal
    for good (see REJECTED_CODES) marks its entries rejected and carries on; any other failure is raised,
    and the entries from it on stay unmarked (pending).
    """
    values: list[dict[str, Any]] = []

    def flush() -> None:
        if values:
            _attempt(lambda: send_values(client, run_id, values), [e["seq"] for e in values], mark)
            values.clear()

    for entry in entries:
        if entry["kind"] in VALUE_KINDS:
            values.append(entry)
            continue
        flush()
        if entry["kind"] == "artifact":
            _attempt(lambda: send_artifact(client, run_id, record_dir, entry), [entry["seq"]], mark)
        elif entry["kind"] == "model":
            _attempt(lambda: send_model(client, run_id, record_dir, entry), [entry["seq"]], mark)
        elif entry["kind"] in ("finish", "resume"):
            _attempt(lambda: send_run_state(client, run_id, entry), [entry["seq"]], mark)
        else:         # start: the run exists by now
            mark([entry["seq"]], None)
    flush()


def _attempt(call: Callable[[], None], seqs: list[int], mark: Callable[[list[int], str | None], None]) -> None:
    try:
        call()
    except Exception as exc:
        if not is_rejection(exc):
            raise
        from coroseg.errors import first_line
        from coroseg.tracking.redact import redact_text

        mark(seqs, redact_text(first_line(exc)))
        return
    mark(seqs, None)
