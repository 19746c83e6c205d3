"""The command line: errors name the problem before any work; commands run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from supmim.cli import main
from tests._fixtures import make_image_folder


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "supmim.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])


@pytest.mark.parametrize("args, message", [
    (["--set", "train.lrr=1"], "unknown config key 'train.lrr'"),
    (["--set", "mim.mask_ratio=1.2"], "mim.mask_ratio"),
    (["--target", "vq", "--tokenizer", "no/such/tok"], "supmim tokenizer train"),
    (["--set", "model.patch_size=5"], "must divide model.img_size"),
])
def test_bad_config_fails_before_training(tmp_path, capsys, args, message):
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                 "--preset", "tiny-test", *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_unknown_data_lists_accepted_forms(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run"),
                 "--preset", "tiny-test", "--target", "pixel"])
    err = capsys.readouterr().err
    assert code == 2 and "fashion-mnist" in err and "cifar10" in err and ".tar" in err


def test_invalid_choice_is_reported_by_argparse():
    proc = run_cli("train", "--data", "x", "--out", "y", "--target", "depth")
    assert proc.returncode == 2 and "invalid choice: 'depth'" in proc.stderr
    assert "vq" in proc.stderr and "pixel" in proc.stderr


def test_config_command_prints_resolved_config(capsys):
    assert main(["config", "--preset", "cifar10", "--target", "hog", "--set", "train.lr=5e-4"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["mim"]["target"] == "hog" and cfg["train"]["lr"] == 5e-4
    assert cfg["model"]["embed_dim"] == 192


@pytest.mark.slow
def test_train_resume_export_compare_through_the_cli(tmp_path):
    data = make_image_folder(tmp_path / "data")
    common = ["--data", str(data), "--preset", "tiny-test", "--set", "data.val_fraction=0",
              "--set", "data.batch_size=8"]
    run = tmp_path / "run"
    proc = run_cli("train", *common, "--target", "hog", "--out", str(run), "--epochs", "1", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "test top-1" in proc.stdout
    proc = run_cli("train", "--out", str(run), "--epochs", "2", "--resume", "--quiet")
    assert proc.returncode == 0, proc.stderr
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["type"] == "epoch"]
    assert epochs == [1, 2]
    proc = run_cli("export", str(run), "--out", str(tmp_path / "exp"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "exp" / "model.safetensors").is_file()
    proc = run_cli("compare", *common, "--target", "pixel", "--out", str(tmp_path / "cmp"),
                   "--epochs", "1", "--seeds", "0", "1", "--quiet")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert {r["arm"] for r in result["runs"]} == {"baseline", "mim"} and len(result["runs"]) == 4
    assert result["step_time_ratio_mim_over_baseline"] > 0  # measured; its size is benchmarked
    assert (tmp_path / "cmp" / "compare_curves.png").stat().st_size > 1000
    assert "| baseline | 0, 1 |" in (tmp_path / "cmp" / "compare.md").read_text()


def test_missing_tokenizer_path_fails_before_anything_is_written(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                 "--preset", "tiny-test", "--tokenizer", str(tmp_path / "no_tok")])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_tokenizer_train_then_vq_training_through_the_cli(tmp_path):
    data = make_image_folder(tmp_path / "data")
    common = ["--data", str(data), "--preset", "tiny-test", "--set", "data.val_fraction=0"]
    tok = tmp_path / "tok"
    proc = run_cli("tokenizer", "train", *common, "--out", str(tok), "--steps", "30", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "PSNR" in proc.stdout and "codebook usage" in proc.stdout
    assert (tok / "tokenizer.safetensors").is_file() and (tok / "recon.png").is_file()
    info = json.loads((tok / "tokenizer.json").read_text())
    assert info["config"]["factor"] == 4  # = the tiny-test patch size: token grid = patch grid
    run = tmp_path / "run"
    proc = run_cli("train", *common, "--set", "data.batch_size=8", "--tokenizer", str(tok),
                   "--out", str(run), "--quiet")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["mim_acc"] <= 1.0 for r in lines if r["type"] == "train")
    assert (run / "tokenizer" / "tokenizer.safetensors").is_file()  # the run is self-contained


@pytest.mark.parametrize("line, expected", [("supmim tr", {"train"}),
                                            ("supmim train --pre", {"--preset"}),
                                            ("supmim tokenizer im", {"import"})])
def test_shell_completion_through_argcomplete(tmp_path, line, expected):
    """What bash gets on TAB (argcomplete's protocol: the line in COMP_LINE, the answer in a
    file), without importing torch."""
    pytest.importorskip("argcomplete", reason="pip install 'supmim[completion]'")
    out = tmp_path / "completions"
    code = ("import sys, runpy; sys.argv = ['supmim']; "
            "runpy.run_module('supmim.cli', run_name='__main__')")
    env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line,
           "COMP_POINT": str(len(line)), "_ARGCOMPLETE_STDOUT_FILENAME": str(out)}
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=env,
                          capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert {word.strip() for word in out.read_text().split("\v")} == expected
    imported = {ln.split("|")[-1].strip() for ln in done.stderr.splitlines() if "|" in ln}
    assert "torch" not in imported


def test_every_subcommand_help_says_what_it_does_and_train_examples_parse():
    from supmim.cli import build_parser
    from supmim.cli_help import TRAIN_EXAMPLES, subcommands
    parser = build_parser()
    commands = {path: sub for path, sub, _ in subcommands(parser)}
    assert ("eval", "knn") in commands and ("tokenizer", "cache") in commands
    undescribed = [" ".join(path) for path, sub in commands.items() if not sub.description]
    assert not undescribed
    assert "train one run" in commands[("train",)].format_help()
    # the examples in `supmim train --help` use flags that exist
    examples = [line.split("#")[0].split() for line in TRAIN_EXAMPLES.splitlines()
                if line.strip().startswith(("supmim train", "torchrun"))]
    assert len(examples) == 5
    for words in examples:
        args = parser.parse_args(words[words.index("train"):])
        assert args.command == "train" and args.out.startswith("runs/")
