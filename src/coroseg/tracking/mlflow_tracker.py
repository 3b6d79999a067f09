"""MLflow backend of the Tracker interface.

A failure of tracking never stops the work: the first failed call is reported once, on stderr, with
where the local record is, and every later call becomes a no-op.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Callable

from coroseg import mlflow_env
from coroseg.errors import first_line
from coroseg.tracking.base import Tracker
from coroseg.tracking.layout import MODEL_NAME
from coroseg.tracking.redact import redact_text
from coroseg.tracking.store import prepare_store

log = logging.getLogger("coroseg")

_PARAM_VALUE_LIMIT = 6000  # MLflow rejects longer param values


def model_signature():
    """Any batch size and any spatial size, one channel in, one probability channel out."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    spec = Schema([TensorSpec(np.dtype(np.float32), (-1, 1, -1, -1))])
    return ModelSignature(inputs=spec, outputs=spec)


def pip_requirements() -> list[str]:
    """Given explicitly: MLflow's own inference of them costs seconds and guesses."""
    import mlflow
    import numpy
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", f"numpy=={numpy.__version__}"]


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


def _redacted(tags: dict[str, Any]) -> dict[str, str]:
    return {k: redact_text(str(v)) for k, v in tags.items()}


class MlflowTracker(Tracker):
    def __init__(
        self,
        tracking_uri: str | None,
        experiment: str,
        record_dir: Path | None = None,
        system_metrics: bool = False,
        parent_experiment_id: str | None = None,
    ) -> None:
        mlflow_env.apply()   # also here, for callers that do not come through the CLI
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.record_dir = record_dir
        self.system_metrics = system_metrics
        # Given for a child of the run active in this process (a cross-validation fold): it goes where its parent is.
        self.nested = parent_experiment_id is not None
        self.experiment_id = parent_experiment_id
        self.client = None

    def _guard(self, action: str, call: Callable[[], Any]) -> Any:
        if self.failed:
            return None
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - any tracking failure must leave the work running
            self.failed = True
            said = redact_text(first_line(exc))
            where = f" The complete record is kept in {self.record_dir}." if self.record_dir else ""
            print(
                f"coroseg: MLflow tracking failed while {action} ({type(exc).__name__}: {said}). "
                f"The work goes on without tracking.{where}",
                file=sys.stderr,
            )
            return None

    def start(self, run_name: str | None, tags: dict[str, str], resume_run_id: str | None = None) -> str | None:
        def _start() -> str:
            import mlflow
            from mlflow import MlflowClient

            if not self.nested:
                if self.tracking_uri:
                    mlflow.set_tracking_uri(self.tracking_uri)
                prepare_store(self.tracking_uri)
            self.client = MlflowClient()
            if not self.nested:
                self.experiment_id = resolve_experiment_id(self.client, self.experiment)
            if resume_run_id is not None:      # the same run carries on: same id, steps continue
                run = mlflow.start_run(run_id=resume_run_id, log_system_metrics=self.system_metrics)
            else:
                run = mlflow.start_run(experiment_id=self.experiment_id, run_name=run_name, tags=_redacted(tags),
                                       log_system_metrics=self.system_metrics, nested=self.nested)
            return run.info.run_id

        self.run_id = self._guard("starting the run", _start)
        if self.run_id is None:
            self.failed = True
        return self.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        batch = [Param(k, redact_text(str(v))[:_PARAM_VALUE_LIMIT]) for k, v in params.items()]
        self._guard("logging params", lambda: self.client.log_batch(self.run_id, params=batch))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import mlflow

        self._guard("logging metrics", lambda: mlflow.log_metrics(metrics, step=step, run_id=self.run_id))

    def set_tags(self, tags: dict[str, str]) -> None:
        import mlflow

        self._guard("setting tags", lambda: mlflow.set_tags(_redacted(tags)))

    def log_artifact(self, local_path: Path, artifact_dir: str) -> None:
        self._guard(
            f"uploading {artifact_dir}/{Path(local_path).name}",
            lambda: self.client.log_artifact(self.run_id, str(local_path), artifact_dir),
        )

    def log_model(self, model: Any, input_example: Any, metadata: dict[str, Any], extra_files: list[str]) -> None:
        import mlflow.pytorch

        self._guard(
            "logging the model",
            lambda: mlflow.pytorch.log_model(
                model,
                name=MODEL_NAME,
                signature=model_signature(),
                input_example=input_example,
                pip_requirements=pip_requirements(),
                metadata=metadata,
                extra_files=extra_files,
                serialization_format="pt2",  # a graph, not a pickle: safe to load from anyone
            ),
        )

    def child(self) -> Tracker:
        if self.failed or self.run_id is None:
            return Tracker()      # the user was told once already; folds train on without tracking
        return MlflowTracker(self.tracking_uri, self.experiment, self.record_dir,
                             parent_experiment_id=self.experiment_id)

    def finish(self, status: str = "FINISHED") -> None:
        import mlflow

        if self.run_id is None:
            return
        # Ending the run also stops the system-metrics thread, so do it even after a failure.
        try:
            mlflow.end_run(status=status if not self.failed else "FAILED")
        except Exception as exc:  # noqa: BLE001 - the server may be gone; the work is done anyway
            log.warning("could not close the MLflow run: %s", redact_text(first_line(exc)))
