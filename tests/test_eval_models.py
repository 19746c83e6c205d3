"""Evaluations leave the encoder alone: eval mode, unchanged weights (unless fine-tuning was
asked for), restored training flags; features and subset logits are the ones documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import ImageNetInfo

from supmim.evaluation.classify import classify, resolve_class_map
from supmim.evaluation.datasets import eval_transform, load_split
from supmim.evaluation.features import extract_features, make_loader, pooled_features
from supmim.evaluation.segmentation.data import load_seg_split
from supmim.evaluation.segmentation.heads import any_input_size, default_levels
from supmim.evaluation.segmentation.train import SegProtocol, run_segmentation
from tests._eval_fixtures import (DATA_CONFIG, ModeRecorder, same_state, seg_npz, state_copy,
                                  tiny_vit)
from tests._fixtures import make_image_folder

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("eval_models") / "data", classes=3,
                             train_per_class=8, test_per_class=4, size=32)


def test_feature_extraction_runs_in_eval_mode_and_changes_nothing(folder):
    model = tiny_vit(global_pool="token")
    model.blocks[0].drop_path1 = torch.nn.Dropout(0.5)  # would make features random in train mode
    model.train()
    before = state_copy(model)
    split = load_split(str(folder), "test")
    loader = make_loader(split.with_transform(eval_transform(DATA_CONFIG), 3), 5, 0, CPU)
    recorder = ModeRecorder(model)
    feats, labels = extract_features(model, loader, CPU, progress=False)
    recorder.close()
    assert recorder.modes and not any(recorder.modes)  # every module ran in eval mode
    assert model.training  # ... and the caller's mode is back
    assert same_state(before, state_copy(model))
    again, _ = extract_features(model, loader, CPU, progress=False)
    assert np.array_equal(feats, again)  # deterministic: dropout was off
    assert feats.shape == (12, 32) and np.array_equal(labels, split.labels)


def test_pooling_choices_read_the_documented_tokens():
    model = tiny_vit(global_pool="avg").eval()  # a GAP model: fc_norm after pooling
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.forward_features(x)  # (2, 1 + 16, 32)
        assert torch.allclose(pooled_features(model, x, "gap"), model.fc_norm(tokens[:, 1:].mean(1)))
        assert torch.allclose(pooled_features(model, x, "cls"), model.fc_norm(tokens[:, 0]))
        assert torch.allclose(pooled_features(model, x, "default"), pooled_features(model, x, "gap"))


def test_imagenet_subset_prediction_uses_only_the_subset_logits(tmp_path):
    wnids = ImageNetInfo("imagenet-1k").label_names()
    subset = [wnids[6], wnids[11], wnids[13]]  # a flat folder of class folders, like ImageNet-A
    rng = np.random.default_rng(0)
    for w in subset:
        (tmp_path / w).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / w / f"{i}.png")
    model = tiny_vit(num_classes=1000)
    with torch.no_grad():  # constant logits: class 999 is the model's favourite, then 13, then 6
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias[999], model.head.bias[13], model.head.bias[6] = 10.0, 5.0, 1.0
    split = load_split(str(tmp_path), "all")
    cmap = resolve_class_map(1000, None, split.classes)
    loader = make_loader(split.with_transform(eval_transform(DATA_CONFIG), 3), 4, 0, CPU)
    scores = classify(model, loader, cmap, CPU, progress=False)
    # restricted to the 3 subset logits every image is predicted wnids[13], the third class:
    # only its 2 images are right; with all 1000 logits (class 999) none would be
    assert scores["top1"] == pytest.approx(100 * 2 / 6)
    assert scores["top5"] == 100.0  # only 3 classes to choose from


def _seg_run(tmp_path, finetune: bool, head: str = "linear", epochs: int = 3):
    data = seg_npz(tmp_path / "seg.npz")
    train, test = load_seg_split(str(data), "train"), load_seg_split(str(data), "test")
    model = tiny_vit()
    model.train()
    before = state_copy(model)
    recorder = ModeRecorder(model)
    proto = SegProtocol(size=(40, 48), head=head, finetune=finetune, epochs=epochs, batch_size=8,
                        lr=3e-3)
    out = run_segmentation(model, train, test, proto, mean=(0.5,) * 3, std=(0.5,) * 3, progress=False)
    recorder.close()
    return model, before, recorder.modes, out


def test_frozen_segmentation_never_touches_the_encoder(tmp_path):
    model, before, modes, out = _seg_run(tmp_path, finetune=False, head="multilevel", epochs=12)
    assert same_state(before, state_copy(model))
    assert modes and not any(modes)
    assert model.training  # restored
    # the input size was switched back: the model takes 32 px again and refuses 40x48
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    with pytest.raises(AssertionError):
        model(torch.randn(1, 3, 40, 48))
    assert out["feature_grid"] == [5, 6] and out["levels"] == [0, 1]
    assert out["train_loss"][-1] < out["train_loss"][0]
    assert out["pixel_acc"] > 70  # left / right colour halves are easy even for random features
    assert len(out["per_class_iou"]) == 3  # 'void' is not a class


def test_finetuning_updates_the_encoder_in_train_mode(tmp_path):
    model, before, modes, _ = _seg_run(tmp_path, finetune=True, epochs=1)
    after = state_copy(model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "patch_embed.proj.weight" in changed and "blocks.1.mlp.fc2.weight" in changed
    assert any(modes) and not all(modes)  # trained in train mode, scored in eval mode


def test_any_input_size_restores_the_model():
    model = tiny_vit()
    saved = (model.dynamic_img_size, model.patch_embed.strict_img_size, model.patch_embed.flatten)
    with any_input_size(model):
        maps = model.forward_intermediates(torch.randn(1, 3, 16, 40), indices=[1], output_fmt="NCHW",
                                           intermediates_only=True)
        assert maps[0].shape == (1, 32, 2, 5)
    assert (model.dynamic_img_size, model.patch_embed.strict_img_size, model.patch_embed.flatten) == saved
    assert default_levels(tiny_vit(depth=6), "multilevel") == [1, 2, 4, 5]
    assert default_levels(tiny_vit(depth=12), "multilevel") == [2, 5, 8, 11]
