"""Each evaluation metric against an independent reference on the same inputs.

References: scikit-learn (KNeighborsClassifier, average_precision_score, LogisticRegression),
a per-class IoU written here with boolean masks, and small cases worked out by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.neighbors import KNeighborsClassifier

from supmim.evaluation.classify import resolve_class_map
from supmim.evaluation.common import EvaluationError
from supmim.evaluation.knn import knn_evaluate, knn_scores
from supmim.evaluation.linear_probe import fit_linear_probe, fit_logistic
from supmim.evaluation.retrieval import retrieval_metrics
from supmim.evaluation.robustness import mce
from supmim.evaluation.segmentation.metrics import confusion_matrix, scores_from_confusion


def clustered(n: int, d: int, classes: int, seed: int, noise: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian clusters: neighbours are often of another class, so votes matter."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, d))
    y = rng.integers(0, classes, size=n)
    return (centers[y] + noise * rng.normal(size=(n, d))).astype(np.float32), y.astype(np.int64)


# --------------------------------------------------------------------------- kNN


@pytest.mark.parametrize("k", [1, 7, 20])
def test_knn_matches_sklearn_weighted_cosine_vote(k):
    x, y = clustered(420, 16, 5, seed=1, noise=1.5)
    train_x, train_y, test_x, test_y = x[:300], y[:300], x[300:], y[300:]
    T = 0.07
    ref = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                               weights=lambda dist: np.exp((1.0 - dist) / T))
    ref.fit(train_x.astype(np.float64), train_y)
    expected = ref.predict(test_x.astype(np.float64))
    scores = knn_scores(torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(test_x),
                        k, T, num_classes=5, chunk=17)  # odd chunk: the chunking must not matter
    got = scores.argmax(dim=1).numpy()
    assert (got == expected).mean() >= 0.99  # float32 vs float64 may flip an exact tie
    top1 = knn_evaluate(train_x, train_y, test_x, test_y, ks=[k], temperature=T)[k]["top1"]
    assert top1 == pytest.approx(100.0 * (got == test_y).mean())
    assert 30 < top1 < 99  # a real classification problem, not a degenerate one


def test_knn_toy_case_by_hand():
    # bank: two of class 0 near the query direction, one class-1 item right on it
    bank = np.array([[1.0, 0.1], [1.0, -0.1], [1.0, 0.0], [-1.0, 0.0]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1])
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    s = 1 / math.sqrt(1.01)  # cosine of the two class-0 items
    scores = knn_scores(torch.from_numpy(bank), torch.from_numpy(labels), torch.from_numpy(query),
                        k=3, temperature=1.0, num_classes=2)
    # votes 2 e^(s/T) for class 0 and e^(1/T) for class 1 (up to a common factor)
    assert (scores[0, 0] / scores[0, 1]).item() == pytest.approx(2 * math.exp(s - 1.0), rel=1e-5)
    # T = 1: 2 e^0.995 > e^1, class 0 wins; a very low T makes the single closest item decide
    sharp = knn_scores(torch.from_numpy(bank), torch.from_numpy(labels), torch.from_numpy(query),
                       k=3, temperature=0.001, num_classes=2)
    assert torch.isfinite(sharp).all()
    assert scores.argmax().item() == 0 and sharp.argmax().item() == 1
    one = knn_scores(torch.from_numpy(bank), torch.from_numpy(labels), torch.from_numpy(query),
                     k=1, temperature=1.0, num_classes=2)
    assert one.argmax().item() == 1  # k = 1: the item right on the query


# --------------------------------------------------------------------------- retrieval


def reference_retrieval(q, qy, g, gy, ks, loo=False):
    """mAP from sklearn's average_precision_score and Recall@K by brute force, per query."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    aps, recalls = [], {k: [] for k in ks}
    for i in range(len(q)):
        sims = gn @ qn[i]
        rel = gy == qy[i]
        if loo:
            sims, rel = np.delete(sims, i), np.delete(rel, i)
        order = np.argsort(-sims, kind="stable")
        for k in ks:
            recalls[k].append(rel[order[:k]].any())
        if rel.any():
            aps.append(average_precision_score(rel, sims))
    return 100 * np.mean(aps), {k: 100 * np.mean(v) for k, v in recalls.items()}


def test_retrieval_matches_sklearn_average_precision():
    x, y = clustered(310, 8, 6, seed=3)
    q, qy, g, gy = x[:60], y[:60], x[60:], y[60:]
    ref_map, ref_recall = reference_retrieval(q, qy, g, gy, (1, 5, 10))
    got = retrieval_metrics(q, qy, g, gy, ks=(1, 5, 10), memory_mb=1)
    assert got["mAP"] == pytest.approx(ref_map, abs=1e-6)
    for k in (1, 5, 10):
        assert got[f"R@{k}"] == pytest.approx(ref_recall[k])
    assert 10 < got["mAP"] < 90


def test_retrieval_leave_one_out_excludes_the_query_itself():
    x, y = clustered(80, 8, 8, seed=5)
    ref_map, ref_recall = reference_retrieval(x, y, x, y, (1, 3), loo=True)
    got = retrieval_metrics(x, y, ks=(1, 3), leave_one_out=True)
    assert got["mAP"] == pytest.approx(ref_map, abs=1e-6)
    assert got["R@1"] == pytest.approx(ref_recall[1])
    # without removing itself, every query would find itself first: R@1 = 100
    naive = retrieval_metrics(x, y, x, y, ks=(1,))
    assert naive["R@1"] == 100.0 and got["R@1"] < 100.0


def test_retrieval_toy_case_by_hand():
    # the gallery, ranked by similarity to the query (1, 0): angles 0 < 0.3 < 0.6 < 0.9
    angles = np.array([0.0, 0.3, 0.6, 0.9])
    g = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    query = np.array([[1.0, 0.0]])
    got = retrieval_metrics(query, np.array([1]), g, np.array([1, 0, 1, 0]), ks=(1, 2), topn=2)
    assert got["mAP"] == pytest.approx(100 * (1 / 1 + 2 / 3) / 2)  # hits at ranks 1 and 3
    assert got["mAP@2"] == pytest.approx(100 * (1 / 1) / 2)  # one hit in the top 2, / min(R=2, 2)
    assert got["R@1"] == 100.0
    late = retrieval_metrics(query, np.array([1]), g, np.array([0, 1, 1, 0]), ks=(1, 2))
    assert late["R@1"] == 0.0 and late["R@2"] == 100.0  # first hit at rank 2
    assert late["mAP"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    none = retrieval_metrics(query, np.array([5]), g, np.array([0, 1, 1, 0]), ks=(1,))
    assert none["queries_without_relevant"] == 1.0 and none["R@1"] == 0.0


def test_faiss_backend_agrees_with_exact_torch_search():
    pytest.importorskip("faiss")
    x, y = clustered(250, 8, 5, seed=6)
    q, qy, g, gy = x[:50], y[:50], x[50:], y[50:]
    exact = retrieval_metrics(q, qy, g, gy, ks=(1, 5), topn=20)
    approx = retrieval_metrics(q, qy, g, gy, ks=(1, 5), backend="faiss", topn=20)
    for key in ("R@1", "R@5", "mAP@20"):
        assert approx[key] == pytest.approx(exact[key], abs=1e-6)
    loo_exact = retrieval_metrics(q, qy, ks=(1,), leave_one_out=True, topn=10)
    loo_faiss = retrieval_metrics(q, qy, ks=(1,), leave_one_out=True, backend="faiss", topn=10)
    assert loo_faiss["R@1"] == pytest.approx(loo_exact["R@1"]) and \
        loo_faiss["mAP@10"] == pytest.approx(loo_exact["mAP@10"], abs=1e-6)


# --------------------------------------------------------------------------- linear probe


def test_logistic_probe_matches_sklearn():
    x, y = clustered(240, 10, 4, seed=8, noise=1.0)
    wd = 1e-2
    probe = fit_logistic(x, y, 4, wd)
    xn = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float64)
    # sklearn minimises C * sum(CE) + ||W||^2 / 2 (bias not penalised) == ours / (n wd)
    ref = LogisticRegression(C=1.0 / (len(y) * wd), tol=1e-10, max_iter=10_000).fit(xn, y)
    ours = torch.softmax(probe.logits(x), dim=1).numpy()
    assert np.abs(ours - ref.predict_proba(xn)).max() < 1e-4
    assert np.allclose(probe.weight.numpy(), ref.coef_, atol=1e-3)


def test_probe_weight_decay_is_chosen_on_train_validation_only():
    x, y = clustered(300, 12, 3, seed=9)
    probe = fit_linear_probe(x, y, 3, wd_grid=[1e-6, 1.0], val_fraction=0.25)
    scores = probe.val_top1
    assert set(scores) == {1e-6, 1.0}
    assert probe.wd == max(scores, key=lambda w: (scores[w], w))
    with pytest.raises(EvaluationError, match="val-fraction"):
        fit_linear_probe(x, y, 3, val_fraction=1.0)


# --------------------------------------------------------------------------- segmentation


def reference_iou(pred: np.ndarray, target: np.ndarray, k: int, ignore: int) -> list[float | None]:
    """Per-class IoU straight from boolean masks (no confusion matrix)."""
    valid = target != ignore
    out = []
    for c in range(k):
        p, t = (pred == c) & valid, (target == c) & valid
        union = (p | t).sum()
        out.append(None if union == 0 else 100.0 * (p & t).sum() / union)
    return out


def test_miou_matches_a_separate_per_class_computation():
    rng = np.random.default_rng(10)
    k = 5
    target = rng.integers(0, k, size=(4, 30, 40))
    target[target == 4] = 1  # class 4 never in the ground truth ...
    pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, k, size=target.shape))
    pred[pred == 3] = 2  # ... and class 3 never predicted
    target[:, :3] = 255  # an ignored band
    cm = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), k, 255)
    got = scores_from_confusion(cm.numpy())
    ref = reference_iou(pred, target, k, 255)
    for a, b in zip(got["per_class_iou"], ref):
        assert (a is None and b is None) or a == pytest.approx(b)
    assert got["mIoU"] == pytest.approx(np.mean([v for v in ref if v is not None]))
    valid = target != 255
    assert got["pixel_acc"] == pytest.approx(100.0 * (pred[valid] == target[valid]).mean())
    assert cm.sum() == valid.sum()  # ignored pixels are not counted


def test_miou_toy_case_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1]])
    s = scores_from_confusion(confusion_matrix(pred, target, 3, 255).numpy())
    # class 0: tp 3, fn 1, fp 1 -> 3/5; class 1: tp 2, fn 1, fp 1 -> 2/4; class 2 absent
    assert s["per_class_iou"] == [pytest.approx(60.0), pytest.approx(50.0), None]
    assert s["mIoU"] == pytest.approx(55.0)
    assert s["pixel_acc"] == pytest.approx(100 * 5 / 7)


# --------------------------------------------------------------------------- robustness


def test_mce_by_hand():
    errors = {"fog": [20.0, 30.0], "snow": [50.0, 50.0]}
    ref = {"fog": [40.0, 60.0], "snow": [50.0, 50.0]}
    out = mce(errors, ref, clean_error=10.0, ref_clean_error=20.0)
    assert out["CE"] == {"fog": pytest.approx(50.0), "snow": pytest.approx(100.0)}
    assert out["mCE"] == pytest.approx(75.0)
    # relative: fog (10 + 20) / (20 + 40) = 50%, snow (40 + 40) / (30 + 30) = 133.3%
    assert out["relative_mCE"] == pytest.approx((50.0 + 400.0 / 3) / 2)
    with pytest.raises(EvaluationError, match="severities"):
        mce({"fog": [1.0]}, {"fog": [1.0, 2.0]})


# --------------------------------------------------------------------------- class maps


def test_class_map_imagenet_subset_uses_only_its_logits():
    from timm.data import ImageNetInfo

    wnids = ImageNetInfo("imagenet-1k").label_names()
    subset = [wnids[6], wnids[11], wnids[13]]  # three ImageNet-A classes, in folder order
    cmap = resolve_class_map(1000, None, subset)
    assert cmap.indices == [6, 11, 13] and cmap.is_subset and cmap.how == "imagenet wnid"
    assert resolve_class_map(1000, None, ["0", "10", "2"]).indices == [0, 10, 2]  # ImageNet-V2 folders
    named = resolve_class_map(3, ["cat", "dog", "eel"], ["eel", "cat"])
    assert named.indices == [2, 0]
    assert resolve_class_map(2, None, ["x", "y"]).how == "by position"
    with pytest.raises(EvaluationError, match="eval linear"):
        resolve_class_map(10, ["a"] * 10, ["p", "q"])
    with pytest.raises(EvaluationError, match="no classification head"):
        resolve_class_map(0, None, ["p"])
