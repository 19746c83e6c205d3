"""The demo picks Fashion-MNIST and falls back to digits (with a note) when it is missing."""

from __future__ import annotations

import supmim.experiments.demo as demo
from supmim.errors import DataError


def test_demo_falls_back_to_digits(monkeypatch, capsys):
    def missing(name, **_):
        raise DataError("fashion-mnist files not found; apt-get install dataset-fashion-mnist")
    monkeypatch.setattr(demo, "resolve_data", missing)
    assert demo.pick_dataset() == "digits"
    out = capsys.readouterr().out
    assert "falling back to scikit-learn's digits" in out and "dataset-fashion-mnist" in out


def test_demo_uses_fashion_mnist_when_present(monkeypatch):
    monkeypatch.setattr(demo, "resolve_data", lambda name, **_: object())
    assert demo.pick_dataset() == "fashion-mnist"


def test_demo_presets_resolve():
    from supmim.config import build_config
    for name in ("fashion-mnist", "digits"):
        cfg = build_config(preset=name, extra={"mim.tokenizer": "tok"})
        assert cfg.mim.target == "vq" and cfg.data.data == name
