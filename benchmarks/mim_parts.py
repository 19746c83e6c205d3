"""Time per FLOP of each part of the MIM step (issue 13, item 3), forward + backward, side by
side in one process: which part of the MIM branch costs more than its arithmetic?

Parts, on one batch of ``supmim bench``'s setting (ViT 192 wide, 12 deep, patch 4 at 32 px,
batch 128, mask ratio 0.75, 1-layer decoder, an untrained f4 VQ tokenizer of the trained one's
cost; ``SupMimModel`` as the trainer builds it, gradients to its parameters):

    clean       the supervised pass: encoder on the whole image, classifier loss
    masked      the encoder on the visible patches (drop mode)
    decoder     decoder + head on the hidden patches + token loss (from fixed encoder tokens)
    tokenizer   the frozen tokenizer (no backward)
    joint       the whole joint forward (both passes, tokenizer, loss) and its backward

Each round times every part twice, in this order; medians over rounds. "time/FLOP vs clean"
is each part's milliseconds per counted GFLOP over the clean pass's: 1.00 means as efficient
as the supervised pass. Also printed: the process's minor page faults and kernel seconds.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/mim_parts.py --threads 2 --rounds 5

Caution (BENCHMARKS 9.5): alternating parts of different sizes makes glibc's malloc hand memory
back and fault it in again, which a training loop's steady state does not do (``supmim
bench`` counts its page faults per step); ``joint`` is the figure to trust.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from supmim.engine.build import build_mim_target
from supmim.experiments.bench import BenchConfig, _random_tokenizer, run_config
from supmim.metrics import step_flops
from supmim.models.encoder import forward_masked, gather_rows, hidden_indices
from supmim.models.factory import build_model
from supmim.models.masking import build_masker, sample_masks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b = BenchConfig(batch=args.batch)
    cfg = run_config(b, _random_tokenizer(Path(tempfile.mkdtemp()) / "tok", b))
    model = build_model(cfg, num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3,
                        target=build_mim_target(cfg)).train()
    assert model.decoder is not None and model.target is not None
    grid = model.encoder.patch_embed.grid_size
    masker = build_masker(cfg.mim.masking, grid, b.mask_ratio)
    count = masker.count  # passed with the mask, as the trainer does
    images = torch.randn(b.batch, 3, b.img_size, b.img_size)
    labels = torch.randint(0, 10, (b.batch,))
    mask = sample_masks(masker, torch.arange(b.batch), 0, 0)
    hidden = hidden_indices(mask, count)
    with torch.no_grad():
        targets = model.mim_targets(images)
        tokens = forward_masked(model.encoder, images, mask, None, count)
    tokens.requires_grad_(True)

    def clean() -> None:
        model._clean(images, labels)[1].backward()

    def masked() -> None:
        forward_masked(model.encoder, images, mask, None, count).sum().backward()

    def decoder() -> None:
        pred = model.decoder(tokens, mask, dropped=True, hidden=hidden)
        model.target.loss(pred, gather_rows(targets, hidden))[0].backward()

    def tokenizer() -> None:
        model.mim_targets(images)

    def joint() -> None:
        model(images, labels, mask, num_masked=count).loss.backward()

    parts = {"clean": clean, "masked": masked, "decoder": decoder, "tokenizer": tokenizer,
             "joint": joint}
    flops = {name: step_flops(fn) for name, fn in parts.items()}
    for fn in parts.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in parts}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(args.rounds):
        for name, fn in parts.items():
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            fn()
            fn()
            times[name].append((time.perf_counter() - start) / 2)
    after = resource.getrusage(resource.RUSAGE_SELF)
    per_flop = {name: statistics.median(times[name]) / flops[name] for name in parts}
    print(f"{args.threads} threads, batch {args.batch}, median of {args.rounds} rounds")
    for name in parts:
        ms = 1000 * statistics.median(times[name])
        print(f"  {name:10s} {ms:8.1f} ms  {flops[name] / 1e9:7.2f} GFLOP  time/FLOP vs clean "
              f"{per_flop[name] / per_flop['clean']:.2f}")
    print(f"  minor page faults {after.ru_minflt - usage.ru_minflt}, kernel "
          f"{after.ru_stime - usage.ru_stime:.1f} s")


if __name__ == "__main__":
    main()
