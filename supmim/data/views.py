"""Token views: K augmented views per training image, each stored as the parameters of its
geometric augmentation and the tokenizer's ids of that view, so training replays a view and
reads its targets instead of running the tokenizer (``mim.token_cache``).

A view's parameters ``(top, left, height, width, flip)`` (int) are, by ``data.crop``:

- ``pad``: the crop's offsets in the reflect-padded image, each in ``[0, 2 * pad]``;
  height = width = ``model.img_size``;
- ``rrc``: the crop box in the (mode-converted) source image, resized to ``img_size``;
- ``none``: zeros and ``img_size`` (only the flip varies).

View ``v`` of the image with dataset index ``j`` is drawn by the live training transform's own
code (torchvision's / timm's ``get_params`` and the flip's ``torch.rand``) under
``SeededSample(mix_seed(view_seed, j, v, TAG))``: its distribution is the live one's, and
:func:`ViewTransform.sample` returns exactly what the live transform returns for that sample
seed. :meth:`ViewTransform.replay` redoes the same PIL operations from stored parameters, bit
for bit (``tests/test_token_views.py``).

Which view an epoch uses, :meth:`ViewCache.view_of`, is a pure function of (the run's seed,
epoch, index) computed with counter hashes on the index's device: each image goes through its
K views in a random order per block of K epochs, so every view is used ``epochs / K`` times.

The cache file (``FOLDER/views.safetensors``): ``params`` (N, K, 5) int16/int32, ``ids``
(N, K, L) int16/int32, ``indices`` (N,) int64 (the dataset index of training position i), and
a JSON ``meta`` of what the views and ids depend on (checked against a run before training:
:func:`supmim.run.token_views.load_for_run`).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from timm.data.transforms import MaybeToTensor, RandomResizedCropAndInterpolation, str_to_interp_mode
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from supmim.data.transforms import _ResizeIfNeeded, _ToMode
from supmim.errors import CheckpointError, ConfigError, DataError
from supmim.seeds import SeededSample, counter_hash, mix_seed

__all__ = ["FILE_NAME", "FORMAT", "VERSION", "ViewCache", "ViewReplay", "ViewTransform",
           "view_seed"]

FORMAT = "supmim.token_views"
VERSION = 1
FILE_NAME = "views.safetensors"
_PARAMS_TAG = 0x71E5  # a view's augmentation draw: mix_seed(view_seed, index, view, TAG)
_ORDER_TAG = 0x0DE5  # the order of the views of one block of K epochs
RRC_SCALE, RRC_RATIO = (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0)  # build_train_transform's


def view_seed(seed: int, index: int, view: int) -> int:
    """The sample seed whose live augmentation is view ``view`` of dataset index ``index``."""
    return mix_seed(seed, index, view, _PARAMS_TAG)


class ViewTransform:
    """The geometric part of ``build_train_transform`` with its draws made explicit: PIL image
    -> normalised tensor, from stored parameters (:meth:`replay`) or from a sample seed
    (:meth:`sample`). ``rand_augment`` and random erasing have no replayable parameters, so a
    token cache refuses them (config validation)."""

    def __init__(self, *, img_size: int, in_chans: int, mean: Sequence[float],
                 std: Sequence[float], crop: str, pad: int, hflip: float,
                 interpolation: str) -> None:
        self.size, self.crop, self.pad, self.hflip = int(img_size), crop, int(pad), float(hflip)
        self.interpolation = interpolation
        self.to_mode = _ToMode("L" if in_chans == 1 else "RGB")
        self.resize = _ResizeIfNeeded(self.size, interpolation)
        # the very objects build_train_transform ends with
        self.to_tensor = MaybeToTensor()
        self.normalize = T.Normalize(mean=torch.tensor(list(mean)), std=torch.tensor(list(std)))

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> ViewTransform:
        return cls(img_size=meta["img_size"], in_chans=meta["in_chans"], mean=meta["mean"],
                   std=meta["std"], crop=meta["crop"], pad=meta["pad"], hflip=meta["hflip"],
                   interpolation=meta["interpolation"])

    def sample(self, img: Image.Image, seed: int) -> tuple[list[int], Tensor]:
        """(params, view): the parameters the live transform draws under ``SeededSample(seed)``
        (in its order: crop, then flip) and the view they give."""
        img = self.to_mode(img)
        with SeededSample(seed):
            s = self.size
            if self.crop == "pad":
                top = left = 0
                if self.pad > 0:  # RandomCrop(s, padding=pad) draws on the padded image
                    padded = torch.empty(1, s + 2 * self.pad, s + 2 * self.pad)
                    top, left, _, _ = T.RandomCrop.get_params(padded, (s, s))
                box = [top, left, s, s]
            elif self.crop == "rrc":
                box = list(RandomResizedCropAndInterpolation.get_params(img, RRC_SCALE,
                                                                        RRC_RATIO))
            else:
                box = [0, 0, s, s]
            flip = int(bool(torch.rand(1) < self.hflip)) if self.hflip > 0 else 0
        params = [int(x) for x in box] + [flip]
        return params, self.replay(img, params)

    def replay(self, img: Image.Image, params: Sequence[int]) -> Tensor:
        """The view of ``img`` with ``params`` (top, left, height, width, flip): the live
        transform's operations, without its draws."""
        top, left, h, w, flip = (int(x) for x in params)
        img = self.to_mode(img)
        if self.crop == "rrc":
            img = TF.resized_crop(img, top, left, h, w, [self.size, self.size],
                                  str_to_interp_mode(self.interpolation))
        else:
            img = self.resize(img)
            if self.crop == "pad" and self.pad > 0:
                img = TF.pad(img, self.pad, 0, "reflect")  # = RandomCrop's F.pad call
                img = TF.crop(img, top, left, self.size, self.size)
        if flip:
            img = TF.hflip(img)
        return self.normalize(self.to_tensor(img))


class ViewCache:
    """The K views of N training images: ``params`` (N, K, 5), ``ids`` (N, K, L) (None in a
    params-only copy, e.g. the one data-loader workers get), ``indices`` (N,) the dataset
    index of each row. ``seed`` is the run's ``train.seed`` (it picks each epoch's view; the
    views themselves were drawn from ``meta["view_seed"]``). Lookups index on the device of
    the index tensor: :meth:`to` the training device first."""

    def __init__(self, params: Tensor, ids: Tensor | None, indices: Tensor,
                 meta: dict[str, Any], seed: int = 0) -> None:
        if params.ndim != 3 or params.shape[-1] != 5:
            raise ConfigError(f"view params must be (N, K, 5), got {tuple(params.shape)}")
        if ids is not None and tuple(ids.shape[:2]) != tuple(params.shape[:2]):
            raise ConfigError(f"view ids {tuple(ids.shape)} do not match params "
                              f"{tuple(params.shape)}")
        if indices.shape != (params.shape[0],):
            raise ConfigError(f"view indices {tuple(indices.shape)} do not match params "
                              f"{tuple(params.shape)}")
        self.params, self.ids, self.indices = params, ids, indices.long()
        self.meta, self.seed = dict(meta), int(seed)
        row_of = torch.full((int(self.indices.max()) + 1 if len(self.indices) else 1,), -1,
                            dtype=torch.int64, device=self.indices.device)
        row_of[self.indices] = torch.arange(len(self.indices), device=self.indices.device)
        self.row_of = row_of  # dataset index -> row (-1: not a training image)

    def __len__(self) -> int:
        return int(self.params.shape[0])

    @property
    def views(self) -> int:
        return int(self.params.shape[1])

    @property
    def tokens(self) -> int:
        return int(self.ids.shape[2]) if self.ids is not None else int(self.meta["tokens"])

    def to(self, device: str | torch.device) -> ViewCache:
        """A copy with every tensor on ``device``, in its stored width (int16 ids take a
        quarter of int64's memory: ImageNet at K = 8 and 196 tokens is 4 GB, not 16);
        lookups widen a batch's rows to int64."""
        ids = self.ids.to(device) if self.ids is not None else None
        out = copy.copy(self)
        out.params, out.ids = self.params.to(device), ids
        out.indices, out.row_of = self.indices.to(device), self.row_of.to(device)
        return out

    def with_seed(self, seed: int) -> ViewCache:
        out = copy.copy(self)
        out.seed = int(seed)
        return out

    def params_only(self) -> ViewCache:
        """A copy without the ids (what data-loader workers need: a few bytes per view)."""
        out = copy.copy(self)
        out.ids = None
        out.meta = {**self.meta, "tokens": self.tokens}
        return out

    def view_of(self, epoch: int, index: Tensor) -> Tensor:
        """(B,) int64 views in [0, K) for dataset indices ``index`` (B,) in ``epoch``: view
        ``perm[epoch mod K]`` of a random permutation of the K views drawn per (seed, block of
        K epochs, index). A pure function of (seed, epoch, index), on ``index``'s device."""
        k = self.views
        block, slot = divmod(int(epoch), k)
        if k == 1:
            return torch.zeros_like(index, dtype=torch.int64)
        key = mix_seed(self.seed, block, _ORDER_TAG)
        keys = counter_hash(key, index.long()[:, None],
                            torch.arange(k, device=index.device)[None, :])
        return keys.argsort(dim=1, stable=True)[:, slot]

    def rows(self, index: Tensor) -> Tensor:
        """(B,) rows of dataset indices (a run's indices are all in the cache: the cache is
        checked against the run's training indices before training)."""
        return self.row_of[index.long()]

    def params_of(self, index: Tensor, view: Tensor) -> Tensor:
        """(B, 5) (top, left, height, width, flip) of ``view`` (B,) of ``index`` (B,)."""
        return self.params[self.rows(index), view.long()].long()

    def ids_of(self, index: Tensor, view: Tensor) -> Tensor:
        """(B, L) int64 token ids of ``view`` (B,) of ``index`` (B,)."""
        assert self.ids is not None, "a params-only ViewCache has no ids"
        return self.ids[self.rows(index), view.long()].long()

    # ------------------------------------------------------------------ file
    @staticmethod
    def path(folder: str | Path) -> Path:
        return Path(folder) / FILE_NAME

    def save(self, folder: str | Path) -> Path:
        """Write ``FOLDER/views.safetensors`` through a temporary file and a rename."""
        from safetensors.torch import save_file
        assert self.ids is not None, "cannot save a params-only ViewCache"
        path = self.path(folder)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tensors = {"params": _narrow(self.params), "ids": _narrow(self.ids),
                   "indices": self.indices.cpu().long().contiguous()}
        try:
            save_file(tensors, str(tmp), metadata={"format": FORMAT,
                                                   "meta": json.dumps(self.meta, sort_keys=True)})
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, folder: str | Path, *, seed: int = 0) -> ViewCache:
        """The cache in ``folder``; ConfigError when there is none, CheckpointError when it
        is not a readable view cache."""
        from safetensors import safe_open
        path = cls.path(folder)
        if not path.is_file():
            raise ConfigError(f"mim.token_cache: no view cache at '{path}'; build one with "
                              "`supmim tokenizer cache --data D --tokenizer T --views K "
                              f"--out {folder}`")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                if header.get("format") != FORMAT:
                    raise ValueError(f"format {header.get('format')!r}, expected {FORMAT!r}")
                meta = json.loads(header["meta"])
                tensors = {k: f.get_tensor(k) for k in ("params", "ids", "indices")}
        except Exception as e:  # noqa: BLE001 - damaged or foreign file: say so, in one line
            raise CheckpointError(f"unreadable view cache '{path}': {e}; rebuild it with "
                                  "`supmim tokenizer cache`") from e
        return cls(tensors["params"], tensors["ids"], tensors["indices"], meta, seed=seed)


def _narrow(t: Tensor) -> Tensor:
    """int16 when every value fits, else int32 (ids, crop boxes: small non-negative ints)."""
    t = t.detach().cpu()
    small = t.numel() == 0 or (int(t.min()) >= 0 and int(t.max()) <= torch.iinfo(torch.int16).max)
    return t.to(torch.int16 if small else torch.int32).contiguous()


class ViewReplay(Dataset):
    """Training items ``(view, label, index)`` for keys ``(position, sample_seed, epoch)``:
    the image at ``position`` of ``base`` (an :class:`~supmim.data.ImageDataset`; its own
    random transform is not used) under the view :meth:`ViewCache.view_of` picks for its
    index and ``epoch``. The sample seed is not needed: the view's draws are stored."""

    keyed_by_epoch = True  # MaskedItems passes the whole key through

    def __init__(self, base: Any, views: ViewCache) -> None:
        self.base = copy.copy(base)
        self.base.transform = None  # items are the mode-converted PIL images
        self.views = views.params_only().to("cpu")
        self.transform = ViewTransform.from_meta(views.meta)

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name: str) -> Any:  # labels, paths, ... of the wrapped dataset
        if name == "base":  # not set yet (unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.base, name)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[Tensor, int, int]:
        position, _, epoch = key
        img, label, index = self.base[position]  # a substitute comes with its own index
        at = torch.tensor([index])
        if not 0 <= index < len(self.views.row_of) or int(self.views.rows(at)) < 0:
            raise DataError(f"dataset index {index} is not in the view cache; rebuild it for "
                            "this run's training split")
        params = self.views.params_of(at, self.views.view_of(epoch, at))[0].tolist()
        return self.transform.replay(img, params), label, index
