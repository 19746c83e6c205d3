"""The tokenizer's share of the MIM training step (issue 3, item 3).

Builds the CIFAR-10 benchmark model (preset ``cifar10``: ViT 192 wide, 6 deep, patch 4 at
32 px, 1-layer MIM decoder, 75% of patches dropped) with a VQ target and times, on one batch,
interleaved so that machine noise hits both alike:

- ``target``: ``VQTarget`` on the batch (resize to the token grid + tokenizer encode);
- ``step``: one full training step (target, both forward passes, backward, AdamW step).

Tokenizers: the trained f4 tokenizer of the benchmark (``--tokenizer``), and optionally a
MaskGIT-architecture f16 VQGAN (128 x [1, 1, 2, 2, 4], random weights: the speed of the real
one) fed 128 px images to give the same 8x8 grid (``--maskgit``).

Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tokenizer_share.py \
           --tokenizer runs/bench_cifar10/tokenizer [--batch 128] [--reps 5] [--maskgit]
Prints one JSON object; speed figures are ratios measured side by side in one process.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from timm.optim import create_optimizer_v2

from supmim.config import build_config
from supmim.models.masking import build_masker, sample_masks
from supmim.models import create_vit
from supmim.models.encoder import grid_of
from supmim.models.joint import SupMimModel
from supmim.targets import VQGAN, VQGANConfig, VQTarget, load_tokenizer


def measure(tokenizer: torch.nn.Module, batch: int, reps: int, seed: int = 0) -> dict:
    cfg = build_config(preset="cifar10", extra={"mim.tokenizer": "unused"})
    m = cfg.model
    target = VQTarget(tokenizer, img_size=m.img_size, patch_size=m.patch_size, in_chans=3)
    torch.manual_seed(seed)
    model = SupMimModel(create_vit(m, num_classes=10), mean=[0.5] * 3, std=[0.25] * 3,
                        mim=cfg.mim, target=target, label_smoothing=0.1).train()
    opt = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, m.img_size, m.img_size, generator=g)
    labels = torch.randint(0, 10, (batch,), generator=g)
    masker = build_masker(cfg.mim.masking, grid_of(model.encoder), cfg.mim.mask_ratio)
    mask = sample_masks(masker, range(batch), 0, seed)

    def step() -> None:
        out = model(images, labels, mask)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    def tokens() -> None:
        model.mim_targets(images)

    step(), tokens()  # warm-up
    times: dict[str, list[float]] = {"step": [], "target": []}
    for _ in range(reps):
        for name, fn in (("step", step), ("target", tokens)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"batch": batch, "tokenizer_size": list(target.tokenizer_size),
            "step_s": round(med["step"], 4), "target_s": round(med["target"], 4),
            "target_share_of_step": round(med["target"] / med["step"], 4),
            "step_s_all": [round(x, 4) for x in times["step"]],
            "target_s_all": [round(x, 4) for x in times["target"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True, help="a supmim tokenizer folder (f4 for 8x8)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--maskgit", action="store_true",
                    help="also time a MaskGIT-size f16 VQGAN (random weights) on the same grid")
    ap.add_argument("--maskgit-batch", type=int, default=16)
    args = ap.parse_args()
    result = {"machine": f"{platform.processor() or platform.machine()}, "
                         f"{torch.get_num_threads()} torch thread(s)",
              "torch": torch.__version__}
    result["trained_f4"] = measure(load_tokenizer(args.tokenizer), args.batch, args.reps)
    if args.maskgit:
        big = VQGAN(VQGANConfig())  # MaskGIT ImageNet f16 architecture, 1024 x 256 codes
        result["maskgit_f16"] = measure(big, args.maskgit_batch, max(2, args.reps // 2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
