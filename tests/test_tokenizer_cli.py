"""`supmim tokenizer import | eval | train` and the token cache."""

from __future__ import annotations

import json

import torch
from torch.utils.data import TensorDataset

from _fixtures import make_image_folder
from supmim.cli import IMPORT_FORMATS, main
from supmim.targets import (CHECKPOINT_FORMATS, TokenCache, VQTarget, load_tokenizer,
                            precompute_tokens)
from supmim.targets.tokenizers.third_party import sha256_of
from test_vqgan import random_state, smooth_images, source_shapes


def test_cli_format_list_matches_the_importers() -> None:
    assert IMPORT_FORMATS == CHECKPOINT_FORMATS


def test_import_eval_and_train_with_an_imported_tokenizer(tmp_path, capsys) -> None:
    src = tmp_path / "maskgit-vqgan-imagenet-f16-256.bin"
    torch.save(random_state(source_shapes("maskgit-bin")), src)
    tok = tmp_path / "tok"
    # a wrong checksum is refused with the reason, and nothing is written
    assert main(["tokenizer", "import", str(src), "--format", "maskgit-bin", "--out", str(tok),
                 "--sha256", "f" * 64]) == 2
    err = capsys.readouterr().err
    assert "sha256 mismatch" in err and sha256_of(src) in err and not tok.exists()
    assert main(["tokenizer", "import", str(src), "--format", "maskgit-bin", "--out", str(tok),
                 "--sha256", sha256_of(src)]) == 0
    out = capsys.readouterr().out
    assert "vqgan-maskgit, f4, 24 codes" in out and "(verified)" in out
    meta = json.loads((tok / "tokenizer.json").read_text())
    assert meta["kind"] == "vqgan-maskgit" and meta["metadata"]["source_sha256"] == sha256_of(src)

    data = make_image_folder(tmp_path / "data", train_per_class=12, test_per_class=4)
    common = ["--data", str(data), "--preset", "tiny-test", "--set", "data.val_fraction=0.25"]
    assert main(["tokenizer", "eval", str(tok), *common, "--json", str(tmp_path / "e.json")]) == 0
    assert "PSNR" in capsys.readouterr().out
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["image_size"] == 16 and result["images"] == 9 and result["factor"] == 4
    assert 0 < result["usage"] <= 100 and result["kind"] == "vqgan-maskgit"
    # --tokenizer takes the imported folder exactly as it takes a trained one
    run = tmp_path / "run"
    assert main(["train", *common, "--tokenizer", str(tok), "--set", "train.max_steps=1",
                 "--out", str(run), "--quiet"]) == 0
    assert load_tokenizer(run / "tokenizer").kind == "vqgan-maskgit"


def test_tokenizer_train_with_discriminator_logs_perplexity(tmp_path, capsys) -> None:
    data = make_image_folder(tmp_path / "data", train_per_class=12, test_per_class=4)
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--data", str(data), "--preset", "tiny-test",
                 "--set", "data.val_fraction=0", "--out", str(out), "--steps", "12",
                 "--codebook-size", "16", "--batch-size", "8", "--disc-weight", "0.1",
                 "--disc-start", "4", "--log-every", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "codebook usage" in printed and "perplexity" in printed
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("batch_perplexity" in r for r in rows)
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12]
    assert "disc" not in rows[1] and {"gen", "gen_weight", "disc"} <= set(rows[2])  # from step 4
    summary = json.loads((out / "summary.json").read_text())
    assert {"psnr", "usage", "perplexity", "codes_used"} <= set(summary)
    assert summary["train"]["disc_weight"] == 0.1
    assert (out / "recon.png").is_file()


def test_token_cache_matches_the_target(tmp_path) -> None:
    from test_targets import trained_tiny
    target = VQTarget(trained_tiny(4), img_size=32, patch_size=4)
    images = smooth_images(10, size=32)
    data = TensorDataset(images, torch.zeros(10))
    cache = precompute_tokens(target, data, key="k1", batch_size=4)
    assert cache.ids.shape == (10, 64) and cache.ids.dtype == torch.int16
    index = torch.tensor([7, 2, 2])
    assert torch.equal(cache.lookup(index), target(images[index]))
    cache.save(tmp_path / "tokens.safetensors")
    again = TokenCache.load(tmp_path / "tokens.safetensors", key="k1")
    assert again is not None and torch.equal(again.ids, cache.ids)
    assert TokenCache.load(tmp_path / "tokens.safetensors", key="other") is None
    assert TokenCache.load(tmp_path / "missing.safetensors") is None
