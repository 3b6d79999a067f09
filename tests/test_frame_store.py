"""The frame cache and streamed batches (data/frame_store.py, data/batches.py): prepared once, found again,
never stale, read batch by batch, and training the same with any number of loader workers."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from coroseg.config import TrainConfig
from coroseg.data.batches import ResidentRecords, StreamedRecords
from coroseg.data.dataset import load_training_data
from coroseg.data.frame_store import as_inputs
from coroseg.model_spec import ModelSpec
from coroseg.training.postprocess import choose_postprocessing, quantized
from coroseg.training.trainer import NoEvents, seed_everything, train


class Quiet(NoEvents):
    def on_epoch_end(self, result, preview, history):
        self.preview = preview


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("COROSEG_CACHE_DIR", str(folder))
    return folder


def _config(folder, **overrides) -> TrainConfig:
    settings = {"image_size": 64, "batch_size": 2, "epochs": 2, "width": 4, **overrides}
    return TrainConfig(data=str(folder), tracking=False, **settings)


def _cache_files(cache) -> list:
    return sorted((cache / "frames").glob("*.u8"))


def test_frames_are_prepared_once_then_found(folder, cache, caplog):
    caplog.set_level(logging.INFO, logger="coroseg")
    first = load_training_data(_config(folder))[0]
    assert "frames prepared" in caplog.text and len(_cache_files(cache)) == 1
    caplog.clear()
    again = load_training_data(_config(folder))[0]
    assert "prepared frames from" in caplog.text and "frames prepared" not in caplog.text
    assert again.digest == first.digest and again.val.names == first.val.names
    assert np.array_equal(again.train.records(range(len(again.train))), first.train.records(range(len(first.train))))
    records = first.val.records([0])
    assert records.dtype == np.uint8 and records.shape == (1, 3, 64, 64)
    assert set(np.unique(records[:, 1:])) <= {0, 1}             # masks and fields of view are 0/1
    assert not (records[:, 1] & (1 - records[:, 2])).any()       # no vessel outside the field of view


def test_frames_prepared_in_threads_make_the_same_cache_file_as_one_at_a_time(folder, tmp_path, monkeypatch):
    import coroseg.data.dataset as dataset

    files = {}
    for threads in (1, 3):
        monkeypatch.setenv("COROSEG_CACHE_DIR", str(tmp_path / f"cache_{threads}"))
        monkeypatch.setattr(dataset, "host_threads", lambda spare=0, n=threads: n)
        load_training_data(_config(folder))
        files[threads] = _cache_files(tmp_path / f"cache_{threads}")
    assert len(files[1]) == len(files[3]) == 1 and files[1][0].name == files[3][0].name
    assert files[1][0].read_bytes() == files[3][0].read_bytes()


def test_a_native_image_size_is_the_frames_side_rounded_up_and_is_recorded_as_taken(tmp_path, cache):
    from coroseg.data.synthetic import write_synthetic_set

    write_synthetic_set(tmp_path / "d", count=4, size=72, seed=1)
    config = _config(tmp_path / "d", image_size="native")
    data = load_training_data(config)[0]
    assert config.image_size == 80 and data.val.records([0]).shape[-2:] == (80, 80)   # 72 up to the divisor 16


def test_a_changed_mask_or_setting_makes_a_new_cache_file_and_a_truncated_one_is_rebuilt(folder, cache):
    before = load_training_data(_config(folder))[0]
    mask = sorted(folder.glob("*_gt.png"))[0]
    from PIL import Image

    pixels = np.array(Image.open(mask))
    pixels[:8, :8] = 255 - pixels[:8, :8]
    Image.fromarray(pixels).save(mask)
    changed = load_training_data(_config(folder))[0]
    assert changed.digest != before.digest and len(_cache_files(cache)) == 2
    load_training_data(_config(folder, image_size=32))
    assert len(_cache_files(cache)) == 3
    newest = max(_cache_files(cache), key=lambda p: p.stat().st_mtime_ns)
    with open(newest, "r+b") as f:
        f.truncate(100)
    rebuilt = load_training_data(_config(folder, image_size=32))[0]
    assert len(rebuilt.train.records(range(len(rebuilt.train)))) == len(rebuilt.train)
    assert not list((cache / "frames").glob("*.tmp"))


def test_streamed_batches_equal_the_records_in_any_order(folder, cache):
    data = load_training_data(_config(folder))[0]
    source = StreamedRecords(data.train.file, torch.device("cpu"), workers=1)
    order = [np.array([2, 0]), np.array([1, 1]), np.array([3])]
    batches = list(source.read(data.train, order))
    for positions, batch in zip(order, batches):
        assert torch.equal(batch, torch.from_numpy(data.train.records(positions)))
    images, masks, fov = as_inputs(batches[0])
    assert images.dtype == torch.float32 and images.shape == (2, 1, 64, 64) and float(images.max()) <= 1.0
    assert set(masks.unique().tolist()) <= {0.0, 1.0} and set(fov.unique().tolist()) <= {0.0, 1.0}


def _trained(config: TrainConfig):
    data = load_training_data(config)[0]
    seed_everything(config.seed)
    model = ModelSpec.of_training(config).build()
    events = Quiet()
    result = train(config, data, model, torch.device("cpu"), events)
    return result, events


def test_training_is_the_same_with_or_without_loader_workers(folder, cache):
    """The loader's workers draw from their own generator: the augmentation's draws, and so every number of
    the training, do not depend on how many processes read the batches."""
    by_loop, _ = _trained(_config(folder, loader_workers=0))
    by_workers, events = _trained(_config(folder, loader_workers=2))
    assert [h.train_loss for h in by_loop.history] == [h.train_loss for h in by_workers.history]
    assert [h.val_dice for h in by_loop.history] == [h.val_dice for h in by_workers.history]
    probabilities = by_workers.best_val_probabilities
    assert probabilities.dtype == torch.uint8 and probabilities.shape[1:] == (64, 64)
    assert events.preview.probabilities.dtype == np.float32 and events.preview.probabilities.max() <= 1.0


def test_post_processing_chosen_on_uint8_probabilities_matches_float():
    torch.manual_seed(0)
    masks = torch.rand(4, 1, 48, 48) > 0.85
    probabilities = (masks.float() * 0.45 + torch.rand(4, 1, 48, 48) * 0.5).clamp(0, 1)
    exact = choose_postprocessing(probabilities, masks)
    stepped = choose_postprocessing(quantized(probabilities), masks[:, 0].numpy())
    assert stepped.chosen == exact.chosen
    assert stepped.val_dice_after == pytest.approx(exact.val_dice_after, abs=0.01)


def test_records_resident_on_the_device_train_as_the_streamed_ones(folder, cache, monkeypatch):
    """The GPU's way (every record copied once to the device, batches by index there), run on the CPU: the same
    batches, so the same training, as streaming them from the file."""
    import coroseg.training.trainer as trainer

    streamed, _ = _trained(_config(folder, loader_workers=0))
    made = []
    monkeypatch.setattr(trainer, "frame_source", lambda file, device, workers: made.append(1) or
                        ResidentRecords(file, device))
    resident, _ = _trained(_config(folder))
    assert made and [h.val_dice for h in resident.history] == [h.val_dice for h in streamed.history]
    assert [h.train_loss for h in resident.history] == [h.train_loss for h in streamed.history]
