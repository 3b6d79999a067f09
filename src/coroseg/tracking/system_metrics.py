"""System metrics (CPU, memory, disk, network, GPU) sampled in a daemon thread and written to the journal.

MLflow's own monitor sends them itself, to the fluent API's run, and stops when a call fails; here they
are tracker metrics like any other (`system/...`, step = sample number), so they reach MLflow through the
uploader and survive an outage. The samplers are MLflow's.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable

log = logging.getLogger("coroseg")


def _samplers() -> list:
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

    samplers = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    try:
        samplers.append(GPUMonitor())
    except Exception as exc:  # noqa: BLE001 - no NVIDIA GPU or no pynvml: the other metrics go on
        log.debug("no GPU system metrics: %s", exc)
    return samplers


class SystemMetrics:
    def __init__(self, log_metrics: Callable[[dict[str, float], int], None]) -> None:
        self.log_metrics = log_metrics
        # MLflow's own settings, so the same variables tune both.
        self.interval = float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL") or 10)
        self.samples = int(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING") or 1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="coroseg-system-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        samplers = _samplers()
        step = 0
        while not self._stop.is_set():
            for _ in range(self.samples):
                for sampler in samplers:
                    sampler.collect_metrics()
                if self._stop.wait(self.interval):
                    return
            metrics = {}
            for sampler in samplers:
                metrics.update({f"system/{k}": v for k, v in sampler.aggregate_metrics().items()})
                sampler.clear_metrics()
            self.log_metrics(metrics, step)
            step += 1
