"""Data-parallel training under torchrun on the CPU (gloo, 2 processes): one MLflow run, recorded by rank 0, every
epoch logged once with the world's metrics; a SIGTERM stops both ranks together, and the run resumes under torchrun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch



def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "coroseg", "train", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": ""}


def _history(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_each_rank_gets_its_share_of_every_epoch_and_the_same_number_of_steps():
    from coroseg.config import TrainConfig
    from coroseg.training.distributed import World
    from coroseg.training.trainer import _batches

    config = TrainConfig(batch_size=2, seed=5)
    for epoch in (1, 2):
        shares = [torch.cat(_batches(11, config, epoch, False, World(rank, 3))) for rank in range(3)]
        assert {len(_batches(11, config, epoch, False, World(rank, 3))) for rank in range(3)} == {2}
        assert set(torch.cat(shares).tolist()) == set(range(11))        # every frame, 1 padded by a repeat
    first = [torch.cat(_batches(11, config, e, False, World(0, 3))).tolist() for e in (1, 2)]
    assert first[0] != first[1]                                         # a new shuffle each epoch


@pytest.mark.integration            # two processes per training, each importing torch and MONAI
def test_two_processes_make_one_run_with_every_epoch_once(tmp_path, small_config):
    from mlflow import MlflowClient

    done = subprocess.run(_torchrun("--config", str(small_config), "--epochs", "3", "--tracking-uri",
                                    _store(tmp_path), "--experiment", "ddp"),
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run_lines = [line for line in done.stdout.splitlines() if line.startswith("run_id: ")]
    assert len(run_lines) == 1, done.stdout                        # rank 0 alone reports the run
    client = MlflowClient(_store(tmp_path))
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert [r.info.run_id for r in runs] == [run_lines[0].split()[1]]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["world_size"] == "2" and run.data.params["batch_size_per_rank"] == "4"
    for key in ("train_loss", "val_loss", "val_dice", "val_cldice"):
        assert _history(client, run.info.run_id, key) == [1, 2, 3], key
    assert done.stderr.count("epoch 1/3 ") == 1                    # the other rank prints no epoch lines
    assert len(list((tmp_path / "coroseg_runs").iterdir())) == 1   # and writes no record


@pytest.mark.integration
def test_sigterm_stops_both_ranks_and_the_run_resumes_under_torchrun(tmp_path, small_config):
    from mlflow import MlflowClient

    config = tmp_path / "longer.yaml"          # epochs long enough to be stopped in the middle of the training
    config.write_text(small_config.read_text().replace("synthetic_count: 12", "synthetic_count: 32"))
    args = ("--config", str(config), "--epochs", "6", "--tracking-uri", _store(tmp_path), "--experiment", "ddp")
    process = subprocess.Popen(_torchrun(*args), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stderr:
        lines.append(line)
        if line.startswith("epoch 2/6"):
            process.send_signal(signal.SIGTERM)                     # torchrun passes it on to both ranks
            break
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode != 0, stderr
    ids = [line.split()[1] for line in stdout.splitlines() if line.startswith("run_id: ")]
    assert len(ids) == 1, stdout + stderr
    run_id = ids[0]
    client = MlflowClient(_store(tmp_path))
    assert client.get_run(run_id).info.status == "KILLED"
    stopped_after = len(_history(client, run_id, "val_dice"))
    assert 2 <= stopped_after < 6, "".join(lines) + stderr

    done = subprocess.run(_torchrun("--resume", run_id, "--tracking-uri", _store(tmp_path)), cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming after epoch {stopped_after}" in done.stderr
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2"
    assert _history(client, run_id, "val_dice") == [1, 2, 3, 4, 5, 6]
