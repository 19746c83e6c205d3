"""`supmim bench` runs its three loops and reports consistent figures (not timings: those
are for the benchmark itself, on a quiet machine)."""

from __future__ import annotations

import json

import pytest

from supmim.experiments.bench import BenchConfig, bench, format_result
from supmim.cli import main


def test_bench_reports_all_three_loops(tmp_path):
    b = BenchConfig(embed_dim=32, depth=2, num_heads=2, img_size=16, patch_size=4, batch=8,
                    steps=2, warmup=1, rounds=2, target="pixel", threads=1)
    r = bench(b)
    assert set(r["images_per_s"]) == {"plain", "trainer", "trainer+mim"}
    assert all(len(v) == 2 and min(v) > 0 for v in r["step_seconds_rounds"].values())
    # ratios: the median of each round's ratio of the loops' times
    t = r["step_seconds_rounds"]
    assert r["ratio_rounds"]["trainer_over_plain_throughput"] == [
        p / q for p, q in zip(t["plain"], t["trainer"])]
    assert r["ratio_trainer_over_plain_throughput"] == pytest.approx(
        sum(r["ratio_rounds"]["trainer_over_plain_throughput"]) / 2)
    assert r["ratio_mim_over_sup_step_time"] == pytest.approx(
        (t["trainer+mim"][0] / t["trainer"][0] + t["trainer+mim"][1] / t["trainer"][1]) / 2)
    # page faults and kernel time per step are counted for every loop
    assert set(r["minor_faults_per_step"]) == set(r["system_seconds_per_step"]) == set(t)
    assert all(v >= 0 for v in r["minor_faults_per_step"].values())
    # the MIM step does strictly more arithmetic than the plain one (decoder, masked pass)
    assert r["flops_per_step"]["trainer+mim"] > r["flops_per_step"]["plain"] > 0
    assert 0 < r["target_share_of_mim_step"] < 1
    assert r["ratio_mim_over_sup_flops"] == (r["flops_per_step"]["trainer+mim"]
                                             / r["flops_per_step"]["plain"])
    assert r["mim_time_ratio_over_flop_ratio"] == pytest.approx(
        r["ratio_mim_over_sup_step_time"] / r["ratio_mim_over_sup_flops"])
    assert "MIM / supervised step time" in format_result(r)


def test_bench_cli_writes_json_with_a_vq_tokenizer_and_the_loader(tmp_path):
    from tests._fixtures import make_image_folder
    data = make_image_folder(tmp_path / "data")
    out = tmp_path / "bench.json"
    assert main(["bench", "--img-size", "16", "--patch-size", "4", "--batch", "4", "--steps",
                 "1", "--warmup", "1", "--rounds", "1", "--threads", "1", "--out", str(out),
                 "--model", "vit_tiny_patch16_224", "--data", str(data), "--workers", "0"]) == 0
    r = json.loads(out.read_text())
    assert r["config"]["target"] == "vq" and r["ratio_mim_over_sup_step_time"] > 0
    # 65 training images after the 10% validation split: 16 batches of 4, one to warm up
    assert r["loader"]["images"] == 60 and r["loader"]["images_per_s"] > 0
