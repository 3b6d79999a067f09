"""Same seed, same run: split, initial weights, batch order and augmentation all follow --seed."""

from __future__ import annotations

import json

from tests.conftest import run_cli


def history(tmp_path, small_config, seed: int, name: str, *flags) -> list[dict]:
    result = run_cli("train", "--config", small_config, "--epochs", 2, "--seed", seed, "--no-tracking",
                     "--run-name", name, *flags, cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    record = tmp_path / result.value("local_record")
    return json.loads((record / "final_model/training_history/history.json").read_text())


def test_same_seed_gives_the_same_losses_and_another_seed_does_not(tmp_path, small_config):
    import mlflow  # noqa: F401 - imported (and its RNG use done) before the first run, as in a real session

    first = history(tmp_path, small_config, 5, "a")
    second = history(tmp_path, small_config, 5, "b")
    other = history(tmp_path, small_config, 6, "c")
    keys = ("train_loss", "val_loss", "val_dice")
    assert [[e[k] for k in keys] for e in first] == [[e[k] for k in keys] for e in second]
    assert [e["train_loss"] for e in first] != [e["train_loss"] for e in other]
    xray = history(tmp_path, small_config, 5, "d", "--xray-augment")     # the flag reaches the augmentation
    assert xray[0]["train_loss"] != first[0]["train_loss"]
