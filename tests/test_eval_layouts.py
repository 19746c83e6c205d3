"""The ImageNet robustness sets and ADE20K in the exact folder layouts users have: tiny
fixtures in each layout, scored against references computed here from the model's logits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import ImageNetInfo

from supmim.cli import main
from supmim.evaluation.common import EvaluationError
from supmim.evaluation.imagenet_layouts import imagenet_c_folders, read_list
from supmim.evaluation.loading import load_model
from supmim.evaluation.segmentation.data import load_seg_split
from supmim.evaluation.tasks import RobustnessOptions, run_robustness
from supmim.evaluation.tasks.imagenet_folders import imagenet_c_summary
from tests._eval_fixtures import export_tiny, tiny_vit

WNIDS = ImageNetInfo("imagenet-1k").label_names()
STANDARD = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
            "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
            "jpeg_compression"]
EXTRA = ["speckle_noise", "gaussian_blur", "spatter", "saturate"]
# AlexNet's mean error per corruption as fractions, typed in again from google-research/augmix imagenet.py
ALEXNET = [0.886428, 0.894468, 0.922640, 0.819880, 0.826268, 0.785948, 0.798360, 0.866816, 0.826572,
           0.819324, 0.564592, 0.853204, 0.646056, 0.717840, 0.606500]
A_INDICES = [6, 11, 13, 15, 17]  # the first ImageNet-A classes (hendrycks/natural-adv-examples)
R_INDICES = [1, 2, 4, 6, 8]  # the first ImageNet-R classes (hendrycks/imagenet-r)
CPU = torch.device("cpu")


def _image(path, rng) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)


def _pixels(path) -> torch.Tensor:
    """The model's own preprocessing at 32 px, done here: 32x32 files, so only scale + normalise."""
    x = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return (torch.from_numpy(x).permute(2, 0, 1) - 0.5) / 0.5


def _reference_top1(model, files: list[tuple[str, int]], outputs: list[int]) -> float:
    """Top-1 (%) of the argmax over head ``outputs``; ``files`` = (path, true head output)."""
    with torch.no_grad():
        logits = model(torch.stack([_pixels(p) for p, _ in files]))[:, outputs]
    pred = [outputs[i] for i in logits.argmax(1).tolist()]
    return 100.0 * np.mean([p == y for p, (_, y) in zip(pred, files)])


def _model_1000(live: list[int], seed: int = 0, hot: dict[int, float] | None = None):
    """A 1000-way tiny ViT whose outputs outside ``live`` never win (bias -100); ``hot``
    adds constant biases (a class always predicted)."""
    model = tiny_vit(num_classes=1000, seed=seed)
    with torch.no_grad():
        dead = torch.ones(1000, dtype=torch.bool)
        dead[live] = False
        model.head.bias[dead] = -100.0
        model.head.bias[~dead] = 0.0
        model.head.weight[~dead] = torch.randn(int((~dead).sum()), model.head.in_features) * 10
        for k, b in (hot or {}).items():
            model.head.bias[k] = b
    return model.eval()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("layouts")


# --------------------------------------------------------------------------- ImageNet-C


@pytest.fixture(scope="module")
def imagenet_c(root):
    """<corruption>/<severity>/<wnid>/*.JPEG for all 19 corruptions, 3 classes, 2 images each."""
    rng = np.random.default_rng(0)
    classes = [3, 10, 200]
    files: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for c in STANDARD + EXTRA:
        for s in range(1, 6):
            for k in classes:
                for i in range(2):
                    p = root / "ImageNet-C" / c / str(s) / WNIDS[k] / f"ILSVRC2012_val_{k:05d}{i}.JPEG"
                    _image(p, rng)
                    files.setdefault((c, s), []).append((str(p), k))
    model = _model_1000(classes)
    return {"path": root / "ImageNet-C", "files": files, "model": model,
            "export": export_tiny(root / "c_model", model)}


def test_imagenet_c_folders_top1_per_corruption_and_severity_and_alexnet_mce(imagenet_c):
    model = load_model(imagenet_c["export"])
    result = run_robustness(model, None, RobustnessOptions(imagenet_c=str(imagenet_c["path"]), progress=False),
                            device="cpu")
    got = result["details"]["imagenet_c"]
    want = {c: [_reference_top1(imagenet_c["model"], imagenet_c["files"][c, s], list(range(1000)))
                for s in range(1, 6)] for c in STANDARD + EXTRA}
    assert list(got["accuracy"]) == STANDARD + EXTRA
    for c in want:
        assert got["accuracy"][c] == pytest.approx(want[c])
    assert len({a for v in want.values() for a in v}) > 3  # the accuracies vary: the check can fail
    per_c = {c: np.mean(v) for c, v in want.items()}
    ce = [100 * (100 - per_c[c]) / (100 * a) for c, a in zip(STANDARD, ALEXNET)]
    metrics = result["metrics"]
    assert metrics["imagenet-c top-1"] == pytest.approx(np.mean([per_c[c] for c in STANDARD]))
    assert metrics["imagenet-c mCE"] == pytest.approx(np.mean(ce))
    assert metrics["imagenet-c unnormalised mCE"] == pytest.approx(100 - metrics["imagenet-c top-1"])
    assert metrics["imagenet-c extra top-1"] == pytest.approx(np.mean([per_c[c] for c in EXTRA]))
    assert "imagenet-c mCE" in result["lower_is_better"] and got["images"] == 19 * 5 * 6
    assert result["name"] == "robustness | imagenet-c"


def test_imagenet_c_summary_by_hand():
    acc = {"fog": {1: 80.0, 2: 60.0, 3: 40.0, 4: 20.0, 5: 0.0}, "snow": {1: 50.0, 3: 30.0}, "spatter": {2: 10.0}}
    out = imagenet_c_summary(acc, {"fog": 80.0, "snow": 50.0})
    assert out["per_corruption"] == {"fog": 40.0, "snow": 40.0, "spatter": 10.0}
    assert out["top1"] == 40.0 and out["unnormalised_mCE"] == 60.0 and out["extra_top1"] == 10.0
    assert out["CE"] == {"fog": pytest.approx(75.0)}  # snow lacks severities: no CE
    assert out["mCE"] is None  # only with all 15 standard corruptions
    assert imagenet_c_summary(acc, None)["CE"] == {}


def test_imagenet_c_layout_errors_name_the_fix(root, imagenet_c):
    bad = root / "bad_c"
    for sub in ("gaussian_noise/6/n01440764", "gaussian_noise/1/n01440764"):
        (bad / sub).mkdir(parents=True)
    with pytest.raises(EvaluationError, match="severity folders 1..5"):
        imagenet_c_folders(bad)
    with pytest.raises(EvaluationError, match="holds class folders"):
        imagenet_c_folders(imagenet_c["path"] / "fog" / "1")
    with pytest.raises(EvaluationError, match="one corruption's severity folders"):
        imagenet_c_folders(imagenet_c["path"] / "fog")
    (root / "typo" / "gausian_noise" / "1").mkdir(parents=True)
    with pytest.raises(EvaluationError, match="gausian_noise.*rename or remove"):
        imagenet_c_folders(root / "typo")
    grouped = root / "grouped" / "noise"  # the release's tar layout: noise/gaussian_noise/...
    (grouped / "gaussian_noise" / "1" / WNIDS[0]).mkdir(parents=True)
    assert list(imagenet_c_folders(root / "grouped")) == ["gaussian_noise"]


def test_the_runs_classes_must_be_wnids(root, imagenet_c, capsys):
    named = export_tiny(root / "named", tiny_vit(num_classes=3), ["cat", "dog", "eel"])
    assert main(["eval", "robustness", str(named), "--imagenet-c", str(imagenet_c["path"]), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not ImageNet wnids" in err[0] and "named by wnid" in err[0]


def test_a_wnid_run_on_imagenet_c_scores_its_classes_without_alexnet(root, imagenet_c):
    """A model of 2 ImageNet classes (a run trained on wnid folders): the images of the third
    class are dropped; AlexNet's table is over 1000 classes, so no normalised mCE."""
    small = tiny_vit(num_classes=2, seed=1)
    path = export_tiny(root / "small", small, [WNIDS[200], WNIDS[3]])
    opts = RobustnessOptions(imagenet_c=str(imagenet_c["path"]), progress=False)
    result = run_robustness(load_model(path), None, opts, device="cpu")
    got = result["details"]["imagenet_c"]
    files = [(p, {3: 1, 200: 0}[k]) for p, k in imagenet_c["files"]["fog", 2] if k != 10]
    assert got["accuracy"]["fog"][1] == pytest.approx(_reference_top1(small.eval(), files, [1, 0]))
    assert got["classes_scored"] == 2 and got["dropped_images"] == 19 * 5 * 2
    assert "imagenet-c mCE" not in result["metrics"] and "1000 classes" in got["reference_note"]


# --------------------------------------------------------------------------- A / R / Sketch / V2


@pytest.mark.parametrize("variant, indices, listing", [("imagenet-a", A_INDICES, "imagenet_a_wnids.txt"),
                                                       ("imagenet-r", R_INDICES, "imagenet_r_wnids.txt")])
def test_a_and_r_use_only_the_logits_of_their_classes(root, variant, indices, listing):
    rng = np.random.default_rng(1)
    folder = root / variant / variant
    files = []
    for j, k in enumerate(indices):
        for i in range(2 + j % 2):
            _image(folder / WNIDS[k] / f"{i}.jpg", rng)
            files.append((str(folder / WNIDS[k] / f"{i}.jpg"), k))
    (folder / "README.txt").write_text("a file beside the class folders, as in the release")
    # class 999 (in neither subset) always wins over all 1000 logits
    model = _model_1000(indices + [999], seed=2, hot={999: 100.0})
    opts = RobustnessOptions(variants=[f"{variant}={root / variant}"], progress=False)
    result = run_robustness(load_model(export_tiny(root / f"{variant}_model", model)), None, opts, device="cpu")
    want = _reference_top1(model, files, indices)
    assert result["metrics"][f"{variant} top-1"] == pytest.approx(want)
    assert want > 0 and _reference_top1(model, files, list(range(1000))) == 0
    info = result["details"]["variants"][variant]
    assert info["class_folders"] == 5 and not info["complete"] and info["n"] == len(files)
    assert all(WNIDS[k] in read_list(listing) for k in indices)
    assert len(read_list(listing)) == 200


def test_the_stored_200_class_lists_are_timms():
    from importlib.resources import files

    info = files("timm.data") / "_info"
    assert read_list("imagenet_a_wnids.txt") == (info / "imagenet_a_synsets.txt").read_text().split()
    assert read_list("imagenet_r_wnids.txt") == (info / "imagenet_r_synsets.txt").read_text().split()


@pytest.fixture(scope="module")
def v2_and_sketch(root):
    """ImageNet-V2 (<0..999>/) and ImageNet-Sketch (sketch/<wnid>/): all 1000 folders, one
    image each, three in the folders of classes 2, 10 and 100."""
    rng = np.random.default_rng(3)
    for k in range(1000):
        for i in range(3 if k in (2, 10, 100) else 1):
            _image(root / "v2" / "imagenetv2-matched-frequency-format-val" / str(k) / f"{i}.jpeg", rng)
            _image(root / "sketch_data" / "sketch" / WNIDS[k] / f"sketch_{i}.JPEG", rng)
    # constant logits: class 10, then 100, 2, 500, 7 (folder "10" sorts before "2": a mapping
    # by sorted position instead of by index would score other folders)
    model = tiny_vit(num_classes=1000, seed=4)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        for k, b in {10: 9.0, 100: 8.0, 2: 7.0, 500: 6.0, 7: 5.0}.items():
            model.head.bias[k] = b
    return {"model": export_tiny(root / "const", model)}


def test_v2_index_folders_and_sketch_wnid_folders_use_all_1000_logits(root, v2_and_sketch):
    opts = RobustnessOptions(variants=[f"imagenet-v2={root / 'v2'}", f"imagenet-sketch={root / 'sketch_data'}"],
                             progress=False)
    result = run_robustness(load_model(v2_and_sketch["model"]), None, opts, device="cpu")
    n = 1006
    for name in ("imagenet-v2", "imagenet-sketch"):
        assert result["metrics"][f"{name} top-1"] == pytest.approx(100 * 3 / n)  # every image -> class 10
        info = result["details"]["variants"][name]
        assert info["top5"] == pytest.approx(100 * (3 + 3 + 3 + 1 + 1) / n) and info["complete"]
        assert info["n"] == n and info["classes_scored"] == 1000


@pytest.mark.parametrize("spec, message", [
    ("imagenet-sketch={v2}", "ImageNet-V2's layout"),
    ("imagenet-v2={sketch}", "wnid folders"),
    ("imagenet-a={sketch}", "outside imagenet-a's 200 classes"),
    ("imagenet-x={sketch}", "NAME one of"),
])
def test_a_wrong_variant_layout_is_a_one_line_error(root, v2_and_sketch, capsys, spec, message):
    spec = spec.format(v2=root / "v2", sketch=root / "sketch_data")
    assert main(["eval", "robustness", str(v2_and_sketch["model"]), "--variant", spec, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


# --------------------------------------------------------------------------- ADE20K


@pytest.fixture(scope="module")
def ade(root):
    """ADEChallengeData2016/{images,annotations}/{training,validation}: label 0 = other,
    1..150 the classes; a few pixels of value 200 (beyond 150)."""
    rng = np.random.default_rng(5)
    base = root / "ade" / "ADEChallengeData2016"
    raw = {}
    for split, n in (("training", 6), ("validation", 3)):
        for i in range(n):
            stem = f"ADE_{'train' if split == 'training' else 'val'}_{i + 1:08d}"
            _image(base / "images" / split / f"{stem}.jpg", rng)
            mask = rng.choice([0, 1, 2, 150], size=(24, 40)).astype(np.uint8)
            mask[0, :3] = 200
            (base / "annotations" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(base / "annotations" / split / f"{stem}.png")
            raw[split, i] = mask
    (base / "sceneCategories.txt").write_text("ADE_train_00000001 bathroom\n")
    return {"root": root / "ade", "raw": raw}


def test_ade_challenge_labels_shift_down_and_zero_is_ignored(ade):
    split = load_seg_split(str(ade["root"]), "val")
    assert split.split == "val" and len(split) == 3 and split.num_classes == 150
    assert split.classes[:3] == ["wall", "building", "sky"] and split.classes[149] == "flag"
    _, mask = split.item(0)
    raw = ade["raw"]["validation", 0].astype(np.int64)
    want = np.where((raw == 0) | (raw > 150), 255, raw - 1)
    assert np.array_equal(mask, want) and (mask == 149).any() and (mask == 255).any()


def test_ade_challenge_through_the_cli(root, ade, tmp_path):
    model = export_tiny(root / "seg_model", tiny_vit(num_classes=0))
    out = tmp_path / "seg.json"
    assert main(["eval", "segment", str(model), "--data", str(ade["root"]), "--train-split", "training",
                 "--test-split", "validation", "--epochs", "1", "--size", "24", "40", "--quiet",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    confusion = np.asarray(result["details"]["confusion"])
    labelled = sum(int(((m > 0) & (m <= 150)).sum()) for (s, _), m in ade["raw"].items() if s == "validation")
    assert confusion.shape == (150, 150) and confusion.sum() == labelled
    assert len(result["details"]["per_class_iou"]) == 150


def test_ade_without_annotations_is_a_one_line_error(root, capsys):
    base = root / "ade_noann" / "ADEChallengeData2016"
    _image(base / "images" / "validation" / "ADE_val_00000001.jpg", np.random.default_rng(0))
    (base / "images" / "training").mkdir(parents=True)
    model = root / "seg_model"
    if not model.exists():
        export_tiny(model, tiny_vit(num_classes=0))
    assert main(["eval", "segment", str(model), "--data", str(root / "ade_noann"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no annotations/" in err[0]
