"""``supmim visualize``: pictures of MIM predictions and tokenizer reconstructions.

For a few validation images, one row each:

    original | masked input | MIM prediction | tokenizer reconstruction (VQ target only)

The prediction column decodes what the MIM decoder predicts for the hidden patches: for VQ
tokens the argmax ids (visible positions keep the tokenizer's own ids) through the tokenizer's
decoder; for the pixel target the predicted patches, mapped back with each patch's mean and
variance when the target is normalised (as MAE's figures do). In both, the visible patches
are pasted back from the original, so only the hidden area shows the model's work. HOG
predictions have no pixel form: that column says so.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supmim.errors import ConfigError

# torch and the model are imported inside the functions: `supmim --help` builds this
# command's parser and should not pay for importing torch.
if TYPE_CHECKING:
    from torch import Tensor
    from torch.utils.data import Dataset

    from supmim.models.joint import SupMimModel

GREY = 0.5  # fill of hidden patches in the "masked input" column


def patch_mask_to_pixels(mask: Tensor, grid: tuple[int, int], patch: int) -> Tensor:
    """(B, N) bool patch mask (row-major) -> (B, 1, gh*p, gw*p) bool pixel mask."""
    m = mask.reshape(-1, 1, *grid)
    return m.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)


def _columns(model: SupMimModel, images: Tensor, mask: Tensor) -> dict[str, Tensor | None]:
    """:func:`mim_columns`' work, run in eval mode under no_grad."""
    import torch

    from supmim.models.encoder import grid_of

    target = model.target
    original = model.unnormalize(images.float())
    patch = model.encoder.patch_embed.patch_size[0]
    pix = patch_mask_to_pixels(mask, grid_of(model.encoder), patch).to(images.device)
    masked_input = torch.where(pix, torch.full_like(original, GREY), original)
    pred = model.mim_predict(images, mask).float()  # (B, N, out_dim)
    columns: dict[str, Tensor | None] = {"original": original, "masked input": masked_input}
    if target.kind != "regression":  # token ids, hard or soft
        ids = model.mim_targets(images)  # (B, N) the tokenizer's own ids, or (B, N, K)
        if ids.ndim == 3:  # soft targets: the most likely code is the hard id
            ids = ids.argmax(-1)
        mixed = torch.where(mask, pred.argmax(-1), ids)
        decoded = target.decode(mixed)
        prediction = None if decoded is None else torch.where(pix, decoded, original)
        columns["MIM prediction"] = prediction
        columns["tokenizer reconstruction"] = target.decode(ids)
    else:
        decoded = target.decode(pred, reference=original)
        columns["MIM prediction"] = None if decoded is None \
            else torch.where(pix, decoded, original)
    return columns


def mim_columns(model: SupMimModel, images: Tensor, mask: Tensor) -> dict[str, Tensor | None]:
    """The grid's columns for normalised ``images`` (B, C, H, W) and ``mask`` (B, N) bool.

    Returns {title: (B, C, H, W) in [0, 1], or None where the target cannot be drawn}."""
    import torch

    if not model.has_mim or model.decoder is None:
        raise ConfigError("this model has no MIM branch (mim.enabled=false): there is no "
                          "prediction to draw")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return _columns(model, images, mask)
    finally:
        model.train(was_training)


def _to_image(x: Tensor) -> Any:
    """(C, H, W) in [0, 1] -> an HxW (grey) or HxWx3 numpy array for imshow."""
    arr = x.detach().float().clamp(0, 1).cpu()
    return arr[0].numpy() if arr.shape[0] == 1 else arr[:3].permute(1, 2, 0).numpy()


def save_grid(columns: dict[str, Tensor | None], path: str | Path, *,
              title: str | None = None, cell_inches: float = 1.3) -> Path:
    """Draw ``columns`` (title -> (B, C, H, W) or None) as a B-row grid PNG at ``path``.

    Uses matplotlib's object API (no pyplot), so it works headless and leaves no global
    figure state behind."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(columns)
    rows = next(v.shape[0] for v in columns.values() if v is not None)
    fig = Figure(figsize=(cell_inches * len(names), cell_inches * rows + (0.5 if title else 0.2)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, len(names), squeeze=False)
    for c, name in enumerate(names):
        col = columns[name]
        for r in range(rows):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if col is None:
                ax.set_facecolor("0.85")
                if r == 0:
                    ax.text(0.5, 0.5, "no pixel\nform", ha="center", va="center", fontsize=7,
                            transform=ax.transAxes)
                continue
            img = _to_image(col[r])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1,
                      interpolation="nearest")
        axes[0][c].set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def _batch(dataset: Dataset, n: int) -> tuple[Tensor, Tensor]:
    """``n`` items spread evenly over ``dataset`` (splits are often sorted by class): their
    images (B, C, H, W) and dataset indices (B,)."""
    import torch

    size = len(dataset)  # type: ignore[arg-type]
    if size < 1 or n < 1:
        raise ConfigError("cannot draw a grid from an empty dataset (or n < 1)")
    index = torch.linspace(0, size - 1, min(n, size)).round().long().unique()
    items = [dataset[int(i)] for i in index]
    images = torch.stack([item[0] if isinstance(item, (tuple, list)) else item for item in items])
    return images, index


def save_run_grid(model: SupMimModel, dataset: Dataset, path: str | Path, n: int = 8, *,
                  masking: str = "random", mask_ratio: float = 0.75, seed: int = 0,
                  title: str | None = None) -> Path:
    """The grid for ``n`` items spread over ``dataset`` (items ``(normalised image, ...)``,
    e.g. a run's validation split), with masks drawn as in training (``masking``,
    ``mask_ratio``; seeded by ``seed``: the same picture every time). Returns the PNG's
    path."""
    from supmim.models.encoder import grid_of
    from supmim.models.masking import build_masker, sample_masks

    if not model.has_mim:
        raise ConfigError("this run has no MIM branch (mim.enabled=false): nothing to draw")
    images, index = _batch(dataset, n)
    device = next(model.parameters()).device
    masker = build_masker(masking, grid_of(model.encoder), mask_ratio)
    mask = sample_masks(masker, index, epoch=0, seed=seed)
    columns = mim_columns(model, images.to(device), mask.to(device))
    return save_grid(columns, path, title=title or f"{mask_ratio:.0%} of patches hidden")


def load_run_model(run_dir: str | Path, *, data: str | None = None, checkpoint: str = "last",
                   device: str = "cpu") -> tuple[SupMimModel, Any]:
    """A run's SupMimModel (encoder, MIM decoder, frozen target) with trained weights, and
    its :class:`~supmim.data.splits.RunData` (built from ``data`` when given)."""
    from supmim.data.splits import build_run_data
    from supmim.run import RunDir

    run = RunDir.open(run_dir)
    cfg = run.config(checkpoint)
    if not cfg.mim.enabled:
        raise ConfigError(f"run '{run.path}' trained without MIM (mim.enabled=false): there "
                          "is no MIM prediction to draw")
    if data is not None:
        cfg.data.data = data
    model = run.build_model(checkpoint, device=device)
    return model, build_run_data(cfg)


def visualize_run(run_dir: str | Path, out: str | Path, *, data: str | None = None, n: int = 8,
                  checkpoint: str = "last", split: str = "val", seed: int = 0,
                  device: str = "cpu") -> Path:
    """``supmim visualize``: the grid for ``n`` images of the run's ``split``."""
    from supmim.run import RunDir

    model, run_data = load_run_model(run_dir, data=data, checkpoint=checkpoint, device=device)
    dataset = run_data.eval if split == "val" else run_data.test
    if dataset is None:
        raise ConfigError(f"the run's data has no {split} split: use --split "
                          f"{'test' if split == 'val' else 'val'}")
    mim = RunDir(run_dir).config(checkpoint).mim
    title = f"{Path(run_dir).name}: target {mim.target}, {mim.mask_ratio:.0%} hidden, " \
            f"{checkpoint} checkpoint"
    return save_run_grid(model, dataset, out, n=n, masking=mim.masking,
                         mask_ratio=mim.mask_ratio, seed=seed, title=title)


def cmd_visualize(args: argparse.Namespace) -> int:
    path = visualize_run(args.run, args.out, data=args.data, n=args.n, checkpoint=args.checkpoint,
                         split=args.split, seed=args.seed, device=args.device)
    print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``supmim visualize`` to the ``supmim`` parser."""
    p = sub.add_parser("visualize", help="draw original | masked | MIM prediction | tokenizer "
                                         "reconstruction for a run's validation images")
    p.add_argument("run", help="run directory (trained with MIM)")
    p.add_argument("--data", help="the run's dataset (default: the path in its config.yaml)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--n", type=int, default=8, help="images (rows)")
    p.add_argument("--checkpoint", default="last",
                   help="last (default), best, or a folder name under RUN/checkpoints")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--seed", type=int, default=0, help="seed of the drawn masks")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_visualize)


__all__: Sequence[str] = ("mim_columns", "save_grid", "save_run_grid", "visualize_run",
                          "load_run_model", "register")
