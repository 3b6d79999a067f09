"""Journal entries into MLflow: the calls the background uploader and `coroseg sync` both make.

Only `MlflowClient` methods, never the fluent API: several runs may be sent from one process (folds, tests)
and none may pick up another's "active run".
"""

from __future__ import annotations

import shutil
import tempfile
import time
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
# A basic-auth server (mlflow server --app-name basic-auth) writes the creator's permission on a new experiment
# after the experiment itself: a process of the same user that finds the experiment in between (team members'
# trainings started at once) is refused the run for a moment. A refusal that outlasts these waits is real.
PERMISSION_WAITS = (0.5, 1.0, 2.0)   # seconds


def ms(seconds: float) -> int:
    return int(seconds * 1000)


def is_rejection(exc: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    if isinstance(exc, FileNotFoundError):      # the record lost a file: no retry brings it back
        return True
    return isinstance(exc, MlflowException) and exc.error_code in REJECTED_CODES


def already_exists(exc: BaseException) -> bool:
    """MLflow's answer to creating what another process created first (an experiment, a registered model)."""
    return _has_code(exc, "RESOURCE_ALREADY_EXISTS")


def _has_code(exc: BaseException, code: str) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and exc.error_code == code


def resolve_experiment_id(client: Any, name: str) -> str:
    """The id of experiment `name`, created if missing.

    Not `mlflow.set_experiment`: when another process creates the experiment between its lookup and its
    create, it returns without activating it, and the run lands in "Default".
    """
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception as exc:
        if not already_exists(exc):
            raise
        return client.get_experiment_by_name(name).experiment_id   # another process created it just now


def create_run(client: Any, start: dict[str, Any], experiment: str, parent_run_id: str | None,
               extra_tags: dict[str, str] | None = None) -> str:
    """A new run from a journal's start entry; its id."""
    from mlflow.tracking.context import registry as context_registry

    tags = context_registry.resolve_tags({**start.get("tags", {}), **(extra_tags or {})})  # user, source, git
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    experiment_id = resolve_experiment_id(client, experiment)

    def new_run() -> str:
        return client.create_run(experiment_id, start_time=ms(start["time"]), tags=tags,
                                 run_name=start.get("run_name")).info.run_id
    for wait in PERMISSION_WAITS:
        try:
            return new_run()
        except Exception as exc:
            if not _has_code(exc, "PERMISSION_DENIED"):
                raise
        time.sleep(wait)
    return new_run()


def run_exists(client: Any, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def _metrics(entry: dict[str, Any], model_id: str | None) -> list:
    """The metrics of an entry, linked to LoggedModel `model_id` (None: to none) and to the entry's dataset."""
    from mlflow.entities import Metric

    return [Metric(k, float(v), ms(entry["time"]), entry.get("step") or 0, model_id=model_id,
                   dataset_name=entry.get("dataset_name"), dataset_digest=entry.get("dataset_digest"))
            for k, v in (entry.get("metrics") or {}).items()]


def _value_batches(client: Any, entries: list[dict[str, Any]]):
    """MLflow entities of params/metrics/tags entries, cut into calls within MLflow's limits."""
    from mlflow.entities import Param, RunTag

    metrics = [m for e in entries if e["kind"] == "metrics"
               for m in _metrics(e, e["model_id"] if _known_model(client, e.get("model_id")) else None)]
    params = [Param(k, str(v)[:PARAM_VALUE_LIMIT]) for e in entries if e["kind"] == "params"
              for k, v in e["params"].items()]
    params = list({p.key: p for p in params}.values())   # a key given twice in one batch is refused
    tags = list({k: RunTag(k, str(v)) for e in entries if e["kind"] == "tags" for k, v in e["tags"].items()}.values())
    while metrics or params or tags:
        yield metrics[:_MAX_METRICS], params[:_MAX_PARAMS], tags[:_MAX_TAGS]
        metrics, params, tags = metrics[_MAX_METRICS:], params[_MAX_PARAMS:], tags[_MAX_TAGS:]


def _known_model(client: Any, model_id: str | None) -> bool:
    """A metric may name a LoggedModel of this store only (an evaluated model may come from elsewhere)."""
    from mlflow.exceptions import MlflowException

    if not model_id:
        return False
    try:
        client.get_logged_model(model_id)
    except MlflowException:
        return False
    return True


def send_values(client: Any, run_id: str, entries: list[dict[str, Any]]) -> None:
    for metrics, params, tags in _value_batches(client, entries):
        client.log_batch(run_id, metrics=metrics, params=params, tags=tags)


# Each sender of one entry returns what the user is to be told of it, or None.

def send_artifact(client: Any, run_id: str, record_dir: Path, entry: dict[str, Any]) -> None:
    client.log_artifact(run_id, str(record_dir / entry["path"]), entry["artifact_dir"])


def run_model(client: Any, run_id: str, name: str):
    """The READY LoggedModel `name` of the run, or None."""
    from mlflow.entities import LoggedModelStatus

    experiment_id = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models([experiment_id], filter_string=f"name = '{name}'")
    return next((m for m in found if m.source_run_id == run_id and m.status == LoggedModelStatus.READY), None)


def send_model(client: Any, run_id: str, record_dir: Path, entry: dict[str, Any]) -> None:
    """The MLflow model saved in the record becomes the run's LoggedModel `name`, so that
    `runs:/<run_id>/<name>` loads it, and the entry's metrics are logged linked to it (the model's page shows
    them); once per run, however often this is called."""
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    name = entry["name"]
    experiment_id = client.get_run(run_id).info.experiment_id
    if run_model(client, run_id, name) is not None:
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
    metrics = _metrics(entry, logged.model_id)
    if metrics:
        client.log_batch(run_id, metrics=metrics)


def send_image(client: Any, run_id: str, record_dir: Path, entry: dict[str, Any]) -> None:
    from PIL import Image

    with Image.open(record_dir / entry["path"]) as image:
        client.log_image(run_id, image.copy(), key=entry["key"], step=entry["step"], timestamp=ms(entry["time"]),
                         synchronous=True)


def send_dataset(client: Any, run_id: str, record_dir: Path, entry: dict[str, Any]) -> None:
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(entry["dataset_name"], entry["dataset_digest"], "local", entry["source"],
                      profile=json.dumps(entry["profile"]))
    inputs = [DatasetInput(dataset, tags=[InputTag("mlflow.data.context", entry["context"])])]
    try:
        client.log_inputs(run_id, datasets=inputs)
    except Exception:  # noqa: BLE001 - a server's error or a store's own (SQLAlchemy's IntegrityError)
        # Runs started together log the same dataset: MLflow's "create unless it exists" races, and the loser
        # gets a unique-constraint error. The dataset exists now; a second try links it (or fails for real).
        client.log_inputs(run_id, datasets=inputs)


def send_register(client: Any, run_id: str, record_dir: Path, entry: dict[str, Any]) -> str:
    from coroseg.tracking.registry import register

    return register(client, run_id, entry)


def send_run_state(client: Any, run_id: str, record_dir: Path, entry: dict[str, Any]) -> None:
    if entry["kind"] == "finish":
        client.set_terminated(run_id, status=entry["status"], end_time=ms(entry["time"]))
    else:   # resume: the run carries on
        client.update_run(run_id, status="RUNNING")


ONE_BY_ONE = {"artifact": send_artifact, "model": send_model, "image": send_image, "dataset": send_dataset,
              "register": send_register, "finish": send_run_state, "resume": send_run_state}


def tell(text: str) -> None:
    """What a user is told of a step the uploads took (a registry decision), on standard error."""
    import sys

    print(f"coroseg: {text}", file=sys.stderr, flush=True)


def send_entries(client: Any, run_id: str, record_dir: Path, entries: list[dict[str, Any]],
                 mark: Callable[[list[int], str | None], None], say: Callable[[str], None] | None = None) -> None:
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
        send = ONE_BY_ONE.get(entry["kind"])
        if send is None:   # start: the run exists by now
            mark([entry["seq"]], None)
            continue
        _attempt(lambda: _told(send(client, run_id, record_dir, entry), say or tell), [entry["seq"]], mark)
    flush()


def _told(text: str | None, say: Callable[[str], None]) -> None:
    if text:
        say(text)


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
