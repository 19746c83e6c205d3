"""The view cache against fresh tokens (issue 13, item 4), with the MaskGIT-architecture
tokenizer on the CPU at the CIFAR-10 benchmark configuration (preset ``cifar10``: ViT 192 wide,
6 deep, patch 4 at 32 px, 8x8 grid; the f16 VQGAN 128 x [1, 1, 2, 2, 4] with random weights,
the speed of the real one, fed 128 px images).

Measures, in one process:

- ``share``: the tokenizer's share of the training step with fresh tokens (``mim_targets`` /
  a full step: target, both passes, backward, AdamW) and with the cache (the lookup,
  ``view_of`` + ``ids_of`` on a 4,500-image cache, / a full step that reads its ids);
  interleaved reps, medians;
- ``build``: ``build_view_cache`` on the first ``--build-images`` training images of
  ``--data`` with K = ``--build-views``: seconds per view (replaying the view + tokenizer),
  the replay alone, and the extrapolation to 4,500 images x K for K = 4, 8, 16 next to what
  fresh tokens cost over ``--epochs`` epochs;
- ``agreement``: the cached ids against the tokenizer run again on the loader's images of the
  same views in another batch composition (1.0 = exact);
- ``disk``: bytes per image of a 4,500-image cache file (64 tokens, 1,024 codes) for K = 4, 8, 16.

Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/token_cache.py \\
           --data ../shared/data/cifar10_small_5k_1k_jpeg_q75.tar.gz [--batch 16] [--reps 2]
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from timm.optim import create_optimizer_v2

from supmim.config import build_config
from supmim.data.splits import build_run_data
from supmim.data.views import ViewCache, ViewReplay
from supmim.models import build_model
from supmim.models.encoder import grid_of
from supmim.models.masking import build_masker, sample_masks
from supmim.run.token_views import _Views, build_view_cache
from supmim.targets import VQGAN, VQGANConfig, VQTarget

N_IMAGES = 4500  # the benchmark's training split (5k subset, 10% validation)


def fake_cache(n: int, k: int, tokens: int = 64, codes: int = 1024, seed: int = 0) -> ViewCache:
    g = torch.Generator().manual_seed(seed)
    params = torch.randint(0, 9, (n, k, 5), generator=g)
    params[..., 2:4] = 32
    return ViewCache(params, torch.randint(0, codes, (n, k, tokens), generator=g),
                     torch.arange(n), {"views": k}, seed=seed)


def share(cfg, tokenizer: torch.nn.Module, batch: int, reps: int) -> dict:
    m = cfg.model
    target = VQTarget(tokenizer, img_size=m.img_size, patch_size=m.patch_size, in_chans=3)
    model = build_model(cfg, num_classes=10, mean=[0.5] * 3, std=[0.25] * 3,
                        target=target).train()
    opt = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, m.img_size, m.img_size, generator=g)
    labels = torch.randint(0, 10, (batch,), generator=g)
    index = torch.randperm(N_IMAGES, generator=g)[:batch]
    masker = build_masker(cfg.mim.masking, grid_of(model.encoder), cfg.mim.mask_ratio)
    mask = sample_masks(masker, index, 0, 0)
    cache = fake_cache(N_IMAGES, 8)

    def lookup() -> torch.Tensor:
        return cache.ids_of(index, cache.view_of(3, index))

    def step(cached: bool, n: int = batch) -> None:
        kw = {"targets": lookup()[:n]} if cached else {}
        out = model(images[:n], labels[:n], mask[:n], **kw)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    step(False, 2), step(True, 2), lookup()  # warm-up on a small batch
    fns = {"fresh_step": lambda: step(False), "tokenizer": lambda: model.mim_targets(images),
           "cached_step": lambda: step(True), "lookup": lookup}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    lookups = []
    for _ in range(50):  # the lookup is microseconds: time it on its own, many times
        t0 = time.perf_counter()
        lookup()
        lookups.append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    med["lookup"] = statistics.median(lookups)
    return {"batch": batch, "tokenizer_size": list(target.tokenizer_size),
            **{f"{k}_s": round(v, 6) for k, v in med.items()},
            "tokenizer_share_fresh": round(med["tokenizer"] / med["fresh_step"], 4),
            "tokenizer_share_cached": round(med["lookup"] / med["cached_step"], 6),
            "step_speedup": round(med["fresh_step"] / med["cached_step"], 2),
            "all_s": {k: [round(x, 4) for x in v] for k, v in times.items()}}


def build(cfg, tokenizer: torch.nn.Module, images: int, views: int, batch: int,
          epochs: int, tokenizer_s_per_image: float) -> dict:
    data = build_run_data(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        res = build_view_cache(cfg, tokenizer, views=views, out=tmp, batch=batch,
                               device="cpu", progress=False, data=data, limit=images)
        cache = ViewCache.load(tmp, seed=cfg.train.seed)
    # the replay alone (PIL work per view, what the data-loader workers do)
    src = _Views(data.train, ViewReplay(data.train, cache).transform, views, cfg.train.seed)
    t0 = time.perf_counter()
    for i in range(images):
        src[i]
    replay_s = (time.perf_counter() - t0) / (images * views)
    # agreement: the stored ids against the tokenizer on the same views, as the training
    # loader replays them, all in one batch (the build ran batches of `batch` views)
    replay = ViewReplay(data.train, cache)
    keys, want = [], []
    for i in range(images):
        for v in range(views):
            keys.append(i)
            want.append(v)
    m = cfg.model
    target = VQTarget(tokenizer, img_size=m.img_size, patch_size=m.patch_size, in_chans=3)
    x = torch.stack([replay.transform.replay(replay.base[i][0], cache.params[i, v].tolist())
                     for i, v in zip(keys, want)])
    mean = torch.tensor(list(data.mean)).view(1, 3, 1, 1)
    std = torch.tensor(list(data.std)).view(1, 3, 1, 1)
    fresh = target((x * std + mean).clamp(0.0, 1.0))
    stored = cache.ids[torch.tensor(keys), torch.tensor(want)].long()
    per_view = res["seconds_per_view"]
    extrapolated = {str(k): {"build_s": round(per_view * N_IMAGES * k, 1),
                             "fresh_tokens_s": round(tokenizer_s_per_image * N_IMAGES * epochs, 1),
                             "tokenizer_forwards_ratio_fresh_over_cache": round(epochs / k, 3)}
                    for k in (4, 8, 16)}
    return {"images": images, "views": views, "batch": batch, "seconds": round(res["seconds"], 2),
            "seconds_per_view": round(per_view, 4),
            "seconds_per_image_K": {str(k): round(per_view * k, 3) for k in (4, 8, 16)},
            "replay_only_seconds_per_view": round(replay_s, 6),
            "agreement": round(float((fresh == stored).float().mean()), 6),
            "views_exact": int((fresh == stored).all(dim=1).sum()), "views_checked": len(keys),
            f"extrapolated_{N_IMAGES}_images_vs_fresh_over_{epochs}_epochs": extrapolated}


def disk() -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in (4, 8, 16):
            path = fake_cache(N_IMAGES, k).save(Path(tmp) / str(k))
            out[str(k)] = {"bytes": path.stat().st_size,
                           "bytes_per_image": round(path.stat().st_size / N_IMAGES, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the CIFAR-10 benchmark archive")
    ap.add_argument("--batch", type=int, default=16, help="training batch of the share timing")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--build-images", type=int, default=4)
    ap.add_argument("--build-views", type=int, default=4)
    ap.add_argument("--build-batch", type=int, default=8, help="views per tokenizer forward")
    ap.add_argument("--epochs", type=int, default=15, help="the benchmark's epochs")
    args = ap.parse_args()
    cfg = build_config(preset="cifar10", extra={"data.data": args.data,
                                                "mim.tokenizer": "unused"})
    torch.manual_seed(0)
    tokenizer = VQGAN(VQGANConfig()).eval()  # MaskGIT ImageNet f16, 1024 x 256 codes
    result = {"machine": f"{platform.processor() or platform.machine()}, "
                         f"{torch.get_num_threads()} torch thread(s)",
              "torch": torch.__version__, "tokenizer": "MaskGIT f16 architecture, random weights"}
    t0 = time.perf_counter()
    result["share"] = share(cfg, tokenizer, args.batch, args.reps)
    per_image = result["share"]["tokenizer_s"] / args.batch
    result["build"] = build(cfg, tokenizer, args.build_images, args.build_views,
                            args.build_batch, args.epochs, per_image)
    result["disk"] = disk()
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
