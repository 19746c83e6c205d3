"""The device-resident loader (data.loader=device): the same pixels as torchvision's ops at
its parameters, parameters and masks that depend on (seed, epoch, position) only, evaluation
batches identical to the worker loader's, the auto choice, and exact resume of a run."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torchvision.transforms import functional as TF

from supmim.config import build_config
from supmim.data import EpochSampler
from supmim.data.resident import augment_batch, crop_params
from supmim.data.splits import build_run_data
from supmim.engine.build import build_loaders
from supmim.engine.device_loader import DeviceEvalLoader, DeviceTrainLoader
from supmim.errors import ConfigError
from supmim.run.checkpoint import list_checkpoints
from supmim.models.masking import random_masks_on
from supmim.training import train
from tests._fixtures import make_image_folder


def _cfg(data, **extra):
    base = {"data.data": str(data), "data.batch_size": 8, "data.num_workers": 0,
            "model.img_size": 16, "model.patch_size": 4, "model.embed_dim": 32,
            "model.depth": 2, "model.num_heads": 2, "mim.enabled": False, "train.epochs": 2,
            "train.warmup_epochs": 0, "train.log_every": 1, "data.val_fraction": 0.0}
    return build_config(extra={**base, **extra})


def test_gather_crop_equals_torchvision_reflect_pad_crop_and_flip():
    store = torch.randint(0, 256, (5, 3, 12, 12), dtype=torch.uint8)
    items = torch.tensor([4, 0, 2, 2, 1])
    top, left = torch.tensor([0, 8, 3, 4, 8]), torch.tensor([8, 0, 5, 4, 2])
    flip = torch.tensor([True, False, True, False, False])
    out = augment_batch(store.permute(0, 2, 3, 1).contiguous(), items, top, left, flip, pad=4)
    for b in range(5):
        ref = TF.pad(store[items[b]], [4], padding_mode="reflect")
        ref = TF.crop(ref, int(top[b]), int(left[b]), 12, 12)
        ref = TF.hflip(ref) if flip[b] else ref
        assert torch.equal(out[b], ref)


def test_params_and_masks_depend_on_seed_epoch_position_only():
    positions = torch.arange(4000)
    top, left, flip = crop_params(3, 1, positions, pad=4, hflip=0.5)
    assert set(top.tolist()) == set(range(9)) and set(left.tolist()) == set(range(9))
    assert 0.45 < flip.float().mean() < 0.55
    again = crop_params(3, 1, positions[[7, 3000, 12]], pad=4, hflip=0.5)  # other batch
    for a, b in zip(again, (top, left, flip)):
        assert torch.equal(a, b[[7, 3000, 12]])
    assert not torch.equal(crop_params(3, 2, positions, pad=4, hflip=0.5)[0], top)
    masks = random_masks_on(48, 64, 3, 1, positions[:100])
    assert masks.sum(1).eq(48).all()
    assert torch.equal(random_masks_on(48, 64, 3, 1, positions[[50, 5]]), masks[[50, 5]])
    assert not torch.equal(random_masks_on(48, 64, 3, 2, positions[:100]), masks)


def test_resume_and_process_shares_see_the_same_batches(tmp_path):
    data = make_image_folder(tmp_path / "d", train_per_class=16)
    cfg = _cfg(data)
    loaders = build_loaders(cfg, build_run_data(cfg), torch.device("cpu"))
    assert loaders.resident and isinstance(loaders.train, DeviceTrainLoader)
    full = loaders.train
    full.sampler.set_epoch(1)
    whole = list(full)
    full.sampler.set_epoch(1, start=16)  # resume after two batches
    assert all(torch.equal(a, b) for x, y in zip(whole[2:], full) for a, b in zip(x, y))
    # rank 1 of 2 takes every second position of the same order, with the same pixels
    half = DeviceTrainLoader(full.data, EpochSampler(48, seed=cfg.train.seed, rank=1, world=2),
                             4, seed=cfg.train.seed, pad=cfg.data.pad, hflip=cfg.data.hflip,
                             mean=full.mean, std=full.std)
    half.sampler.set_epoch(1)
    full.sampler.set_epoch(1)
    one = torch.cat([b[0] for b in full])
    two = torch.cat([b[0] for b in half])
    assert torch.equal(two[:len(one[1::2])], one[1::2][:len(two)])


def test_eval_batches_equal_the_worker_loaders(tmp_path):
    data = make_image_folder(tmp_path / "d", size=20)  # resized to 16 on both paths
    cfg = _cfg(data)
    run = build_run_data(cfg)
    device = build_loaders(cfg, run, torch.device("cpu"))
    workers = build_loaders(_cfg(data, **{"data.loader": "workers"}), run, torch.device("cpu"))
    assert isinstance(device.eval, DeviceEvalLoader) and not workers.resident
    for a, b in zip(device.eval, workers.eval):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_auto_falls_back_and_device_refuses_what_it_cannot_batch(tmp_path):
    data = make_image_folder(tmp_path / "d")
    run = build_run_data(_cfg(data))
    cpu = torch.device("cpu")
    assert not build_loaders(_cfg(data, **{"train.max_steps": 1}), run, cpu).resident
    assert not build_loaders(_cfg(data, **{"data.device_max_mb": 0}), run, cpu).resident
    for key, value in (("data.crop", "rrc"), ("data.rand_augment", "rand-m9-mstd0.5"),
                       ("data.re_prob", 0.25), ("data.streaming", True),
                       ("mim.token_cache", "views")):
        with pytest.raises(ConfigError, match=rf"'{key}' .*data.loader=device cannot serve"):
            _cfg(data, **{key: value, "data.loader": "device"})  # before any data is read
    rrc = _cfg(data, **{"data.crop": "rrc"})
    assert not build_loaders(rrc, build_run_data(rrc), cpu).resident
    not_held = dataclasses.replace(run, resident=False)  # what only the data can tell
    with pytest.raises(ConfigError, match="data.loader=device cannot be used: the training "
                                          "data is not an indexed image dataset"):
        build_loaders(_cfg(data, **{"data.loader": "device"}), not_held, cpu)
    assert not build_loaders(_cfg(data), not_held, cpu).resident


def test_a_mim_run_on_the_device_path_resumes_exactly(tmp_path):
    """Killed after step 5 (checkpoints every 3 steps, 6 per epoch): resuming from the
    mid-epoch one ends with the uninterrupted run's weights, bit for bit."""
    data = make_image_folder(tmp_path / "d", train_per_class=16)
    cfg = _cfg(data, **{"mim.enabled": True, "mim.target": "pixel", "data.loader": "device",
                        "train.checkpoint_every": 3, "train.keep_checkpoints": 50})
    full = train(cfg, tmp_path / "full", progress=False)
    shutil.copytree(tmp_path / "full", tmp_path / "part")
    for p in list_checkpoints(tmp_path / "part"):
        if json.loads((p / "meta.json").read_text())["step"] > 5:
            shutil.rmtree(p)
    (tmp_path / "part" / "summary.json").unlink()
    resumed = train(cfg, tmp_path / "part", resume="auto", progress=False)
    assert resumed["test"] == full["test"]
    a = load_file(str(tmp_path / "full" / "checkpoints" / "epoch_0002" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "checkpoints" / "epoch_0002" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
