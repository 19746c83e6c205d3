"""Named starting configurations for ``--preset NAME`` (:data:`PRESETS`).

Each preset is a partial ``{section: {key: value}}`` dict applied on top of the dataclass
defaults of :mod:`supmim.config`, before ``--config``, flags and ``--set``. Above each one: what
it is for, the command that runs it, and the result to expect where BENCHMARKS.md records one
(the section is cited; no number here is from anywhere else).

Every command trains the default MIM target, VQ tokens, so it also needs ``--tokenizer TOK``
(a folder from ``supmim tokenizer train --preset NAME --data D --out TOK``) or ``--tokenizer
auto``; ``--no-mim`` gives the supervised baseline, ``--target pixel|hog`` other targets.
``supmim config --preset NAME`` prints the resolved configuration.

This module holds data only: no torch, nothing else of supmim.
"""

from __future__ import annotations

from typing import Any

# Small ViT sizes that train on a CPU; the paper's sizes use timm's own names.
_TINY = {"embed_dim": 192, "depth": 6, "num_heads": 3}

PRESETS: dict[str, dict[str, Any]] = {
    # fashion-mnist: the demo (`make demo`, i.e. `supmim demo`). Fashion-MNIST 28x28 grey, a
    # ViT 128 wide and 4 deep with a 7x7 patch grid, a 12,000-image class-balanced training
    # subset, 6 epochs: a few minutes per arm on 2 CPU cores.
    #   supmim train --preset fashion-mnist --data fashion-mnist --out R
    # Expect (BENCHMARKS.md section 1, `supmim demo`: its own f4 tokenizer, one seed): test
    # top-1 75.45% for the baseline, 75.92% with MIM; 10.0 min for the whole demo on 2 cores.
    "fashion-mnist": {
        "model": {"img_size": 28, "patch_size": 4, "in_chans": 1, "embed_dim": 128, "depth": 4,
                  "num_heads": 4, "global_pool": "avg", "drop_path": 0.05},
        "data": {"data": "fashion-mnist", "train_samples": 12000, "crop": "pad", "pad": 2,
                 "hflip": 0.5},
        "train": {"epochs": 6, "lr": 1e-3, "warmup_epochs": 0.5},
        "mim": {"decoder_dim": 96, "decoder_heads": 4},
    },
    # digits: the demo's fallback data when Fashion-MNIST is not installed: scikit-learn's
    # 8x8 digits upsampled to 16, patch 2 (an 8x8 grid), 30 epochs.
    #   supmim train --preset digits --data digits --out R
    # Expect: no result is recorded in BENCHMARKS.md for this preset.
    "digits": {
        "model": {"img_size": 16, "patch_size": 2, "in_chans": 1, "embed_dim": 96, "depth": 4,
                  "num_heads": 3, "global_pool": "avg", "drop_path": 0.0},
        "data": {"data": "digits", "crop": "pad", "pad": 1, "hflip": 0.0, "val_fraction": 0.1},
        "train": {"epochs": 30, "lr": 1e-3, "warmup_epochs": 2.0, "log_every": 10},
        "mim": {"decoder_dim": 64, "decoder_heads": 4},
    },
    # cifar10: the CIFAR-10 benchmark model (DESIGN.md's calibration recipe): ViT 192 wide,
    # 6 deep, 3 heads, patch 4 at 32 px (8x8 grid), GAP, drop-path 0.1, AdamW lr 1e-3, wd 0.05;
    # 25 epochs. Used by the benchmark scripts and by every `supmim sweep --study`.
    #   supmim train --preset cifar10 --data D --out R
    #   (D: e.g. ../shared/data/cifar10_small_5k_1k_jpeg_q75.tar.gz, or cifar10 with --download)
    # Expect (BENCHMARKS.md section 2, at --epochs 15 on that 5k/1k subset, 3 seeds): test top-1
    # 47.73 +- 1.80% for the baseline (--no-mim), 54.77 +- 0.64% with MIM on the f4 512-code
    # tokenizer of section 4.1. Pixel and HOG targets at that recipe: section 4.3; 6-epoch
    # studies (`--size cpu`): section 6. No run at the preset's own 25 epochs is recorded.
    "cifar10": {
        "model": {"img_size": 32, "patch_size": 4, "in_chans": 3, **_TINY, "global_pool": "avg",
                  "drop_path": 0.1},
        "data": {"data": "cifar10", "crop": "pad", "pad": 4, "hflip": 0.5},
        "train": {"epochs": 25, "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 2.5},
        "mim": {"decoder_dim": 128, "decoder_heads": 4},
    },
    # vit-b14-in1k: the paper's main setting, for GPUs: ViT-B/14 at 224 on ImageNet-1k, 300
    # epochs with RandAugment, mixup / cutmix and EMA, mask ratio 0.5; MaskGIT-style f16 tokens
    # on the same crop at 256 give the 16x16 grid. The tokenizer path must be given
    # (docs/tokenizers.md, Import: a public MaskGIT checkpoint).
    #   supmim train --preset vit-b14-in1k --data /data/imagenet --tokenizer TOK --out R
    # Expect: no result is recorded in BENCHMARKS.md for this preset (section 5.1 times
    # ViT-B/16 steps with `supmim bench`, not this recipe).
    "vit-b14-in1k": {
        "model": {"name": "vit_base_patch16_224", "img_size": 224, "patch_size": 14,
                  "in_chans": 3, "global_pool": "token", "drop_path": 0.1},
        "data": {"crop": "rrc", "rand_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.25,
                 "crop_pct": 0.875, "val_fraction": 0.0, "batch_size": 256, "num_workers": 8,
                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "train": {"epochs": 300, "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 20,
                  "mixup": 0.8, "cutmix": 1.0, "ema": True, "ema_decay": 0.9999},
        "mim": {"decoder_dim": 512, "decoder_heads": 16, "mask_ratio": 0.5},
    },
    # tiny-test: for tests, as small as a ViT gets (32 wide, 2 deep, 16 px, one epoch); it
    # checks that the pipeline runs, not what it learns.
    #   supmim train --preset tiny-test --data D --out R   (D: any small image folder)
    # Expect: no result is recorded in BENCHMARKS.md for this preset.
    "tiny-test": {
        "model": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2,
                  "drop_path": 0.0},
        "data": {"batch_size": 16, "eval_batch_size": 32, "num_workers": 0},
        "train": {"epochs": 1, "warmup_epochs": 0.0, "log_every": 1},
        "mim": {"decoder_dim": 32, "decoder_heads": 2},
    },
}
