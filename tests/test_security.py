"""Trust nothing: pickles that would run code are refused (and never run), archives cannot
write outside their folder, and nothing opens a network connection unasked."""

from __future__ import annotations

import io
import pickle
import socket
import tarfile
from pathlib import Path

import pytest
import torch

from supmim.config import build_config
from supmim.data import resolve_data
from supmim.run.checkpoint import latest_checkpoint, load_checkpoint
from supmim.training import train
from supmim.errors import CheckpointError, DataError
from tests._fixtures import make_image_folder


class _Payload:
    """Unpickling this object would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def _tiny_run(tmp_path: Path) -> Path:
    data = make_image_folder(tmp_path / "data")
    cfg = build_config(preset="tiny-test", extra={"data.data": str(data), "mim.target": "pixel",
                                                   "data.val_fraction": 0.0},
                       overrides=["data.batch_size=8"])
    train(cfg, tmp_path / "run", progress=False)
    return tmp_path / "run"


def test_malicious_pickle_in_a_checkpoint_is_refused_and_never_runs(tmp_path):
    run = _tiny_run(tmp_path)
    folder = latest_checkpoint(run)
    marker = tmp_path / "pwned.txt"
    state = torch.load(folder / "state.pt", weights_only=True)
    state["extra"] = _Payload(marker)
    torch.save(state, folder / "state.pt")  # a tampered checkpoint
    with pytest.raises(CheckpointError, match="broken: state.pt has .* bytes where"):
        load_checkpoint(folder)  # caught by its digest first
    # ...and where the digests were forged too, the unpickler still refuses to run code
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(folder, verify=False)
    assert not marker.exists()
    from supmim.cli import main
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--quiet"]) == 2
    assert not marker.exists()
    # the same payload does run under plain pickle: the test's payload is real
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.read_text() == "code ran"


def _tar_with(path: Path, add) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        img = io.BytesIO()
        from PIL import Image
        Image.new("RGB", (8, 8)).save(img, format="PNG")
        info = tarfile.TarInfo("train/a/x.png")
        info.size = len(img.getvalue())
        tar.addfile(info, io.BytesIO(img.getvalue()))
        add(tar)
    return path


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_archive_links_pointing_outside_are_refused(tmp_path, kind):
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")

    def add(tar: tarfile.TarFile) -> None:
        link = tarfile.TarInfo("train/a/link.png")
        link.type = kind
        link.linkname = str(outside) if kind == tarfile.LNKTYPE else "../../../secret.txt"
        tar.addfile(link)
        # a file written through the link would overwrite the secret
        over = tarfile.TarInfo("train/a/link.png")
        over.size = 5
        tar.addfile(over, io.BytesIO(b"owned"))

    tar = _tar_with(tmp_path / "links.tar.gz", add)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="unsafe member"):
        resolve_data(str(tar), cache_dir=str(cache))
    assert outside.read_text() == "secret"
    assert list((cache / "archives").iterdir()) == []


@pytest.fixture
def no_network(monkeypatch):
    """Every way of opening a connection raises and is recorded."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network access attempted during a test that forbids it")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def test_training_export_and_reload_open_no_connection(tmp_path, no_network):
    import timm

    from supmim.export import export_run
    run = _tiny_run(tmp_path)
    out = export_run(run, tmp_path / "export")
    model = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 3)
    assert no_network == []
    # the guard itself works: a real attempt is caught
    with pytest.raises(OSError, match="network access"):
        socket.create_connection(("example.com", 80))
    assert len(no_network) == 1


def test_cifar_without_download_does_not_touch_the_network(tmp_path, no_network):
    with pytest.raises(DataError, match="--download"):
        resolve_data("cifar10", root=str(tmp_path / "nothing"), download=False)
    assert no_network == []
