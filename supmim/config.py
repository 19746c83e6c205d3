"""Typed run configuration: dataclasses, named presets (:mod:`supmim.presets`), ``key=value``
overrides, validation.

A run is fully described by one :class:`RunConfig`. It is built from defaults, then a preset,
then a YAML file, then command-line overrides (``--set train.lr=3e-4``), and validated before
any data is read or any model is built, so a bad value never costs a training run.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from supmim.config_values import CHOICES, choices_text, coerce, parse_override
from supmim.errors import ConfigError
from supmim.init_source import check_init_from
from supmim.presets import PRESETS  # also importable as supmim.config.PRESETS


@dataclass
class ModelConfig:
    """The ViT encoder: any timm ``VisionTransformer`` by name, plus size overrides."""

    name: str = "vit_tiny_patch16_224"  # timm model name; architecture args below override it
    img_size: int = 32
    patch_size: int = 4
    in_chans: int = 3
    global_pool: str = "avg"  # "token" ([CLS]) or "avg" (GAP)
    embed_dim: int | None = None  # None keeps the timm model's own value
    depth: int | None = None
    num_heads: int | None = None
    drop_path: float = 0.1


@dataclass
class MimConfig:
    """The masked-image-modeling branch. ``enabled=False`` is the supervised baseline."""

    enabled: bool = True
    weight: float = 1.0  # lambda in  loss = CE_cls + lambda * CE_mim
    target: str = "vq"  # "vq" (tokenizer ids, the paper), "pixel" (MAE), "hog" (MaskFeat)
    # a saved tokenizer's folder for target "vq"; "auto": train one on the run's data (or reuse
    # the one cached for the same data and recipe, see supmim.run.tokenizer_cache)
    tokenizer: str | None = "auto"
    mask_ratio: float = 0.75
    masking: str = "random"  # "random" or "block" (BEiT block-wise)
    mode: str = "drop"  # "drop" masked patches (MAE) or "mask_token" (BEiT [MASK] embedding)
    decoder_depth: int = 1  # 0 = linear head only (needs mode "mask_token")
    decoder_dim: int = 128
    decoder_heads: int = 4
    label_smoothing: float = 0.0  # on the token cross-entropy (token_loss "hard")
    # "hard": CE on the tokenizer's id; "soft": CE on a distribution over all codes, weighted
    # by how near each code is to the patch's tokenizer latent (see VQTarget)
    token_loss: str = "hard"
    # "soft": temperature on distances / their codebook mean; 0.03 puts about 40% of the mass
    # on the hard id (about 7 codes in effect) with the CIFAR-10 tokenizer of BENCHMARKS 2
    soft_temperature: float = 0.03
    tokenizer_precision: str = "auto"  # "auto" (bf16 on CUDA), "fp32" or "bf16"
    norm_pix: bool = True  # pixel target: normalise each patch by its mean and std (MAE)
    # steps (batch 32) when tokenizer is "auto"; 1,000 reach 24.1 dB test PSNR and 100% codebook
    # usage on the CIFAR-10 5k subset, 0.65 dB under 4,000 steps on all of CIFAR-10 (BENCHMARKS 4.1)
    tokenizer_steps: int = 1000
    passes: int = 2  # 2: classifier on the clean image (the paper); 1: on the masked one (SupMAE)
    # a view cache folder (`supmim tokenizer cache`): the VQ ids of K stored augmented views per
    # training image; training replays the views and reads their ids, no tokenizer forward
    # (a run with MIM off, e.g. compare's baseline arm, replays the same views)
    token_cache: str | None = None


@dataclass
class DataConfig:
    """Where the images come from and how they are augmented."""

    data: str = "fashion-mnist"  # folder tree, .tar/.tar.gz archive, or a built-in name
    root: str | None = None  # root folder for built-in datasets
    download: bool = False  # allow torchvision to download cifar10/cifar100
    cache_dir: str | None = None  # where archives are extracted (default ~/.cache/supmim)
    val_fraction: float = 0.1  # carved from train, stratified; 0 = evaluate on the test split
    train_samples: int = 0  # class-balanced training subset; 0 = all
    # train_samples is an upper bound (a preset's): fewer images available means all of them,
    # with a note. build_config sets it for a preset's value; setting train_samples clears it
    train_samples_cap: bool = False
    batch_size: int = 128
    eval_batch_size: int = 256
    num_workers: int = 2
    crop: str = "pad"  # "pad" (random crop with padding), "rrc" (random resized crop), "none"
    pad: int = 4
    hflip: float = 0.5
    rand_augment: str | None = None  # timm auto-augment string, e.g. "rand-m9-mstd0.5"
    re_prob: float = 0.0  # random erasing probability
    crop_pct: float = 1.0  # evaluation centre-crop fraction
    interpolation: str = "bicubic"
    mean: list[float] | None = None  # None = the dataset's own statistics
    std: list[float] | None = None
    max_bad_fraction: float = 0.01  # unreadable files are skipped; abort past this share
    # the evaluation split of a WebDataset pattern/URL or hf: source, in the form of data.data
    test_data: str | None = None
    image_column: str | None = None  # Hugging Face image column / WebDataset image extension
    label_column: str | None = None  # Hugging Face label column / WebDataset label member or field
    streaming: bool = False  # read hf: / WebDataset sources front to back (supmim.data.streaming)
    # "device": decode once into a uint8 tensor on the training device and augment batches
    # there (supmim.engine.device_loader); "workers": DataLoader workers; "auto": device where
    # the data and its augmentation allow it (under data.device_max_mb) and the run reads every
    # training image at least once (so a 1-epoch or max_steps run may get workers), else workers
    loader: str = "auto"
    device_max_mb: int = 4096  # the largest decoded training + evaluation set "auto" keeps on the device


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping."""

    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr: float = 1e-5
    clip_grad: float | None = 1.0
    label_smoothing: float = 0.1
    mixup: float = 0.0  # timm Mixup alpha; 0 = off
    cutmix: float = 0.0  # timm CutMix alpha; 0 = off
    ema: bool = False
    ema_decay: float = 0.999
    # "auto": bf16 where the GPU has it natively, else fp16 (with a GradScaler) on CUDA, fp32
    # on the CPU; or "bf16", "fp16", "off" (fp32)
    amp: str = "auto"
    accum_steps: int = 1  # micro-batches per optimizer step: global batch = batch_size x this
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    log_every: int = 50  # steps between metrics.jsonl lines
    max_steps: int = 0  # stop after this many optimizer steps (smoke tests); 0 = no limit
    keep_checkpoints: int = 2  # how many recent checkpoints (epoch or step) to keep besides "best"
    checkpoint_every: int = 500  # also checkpoint every N optimizer steps mid-epoch; 0 = epochs only
    max_bad_steps: int = 5  # non-finite loss/gradient steps are skipped; stop after N in a row
    # start the encoder from a run dir, export folder, .safetensors, or a timm start:
    # timm:NAME[@FILE.safetensors], hf-hub:ORG/NAME, local-dir:DIR (supmim.init_source)
    init_from: str | None = None
    layer_decay: float | None = None  # layer-wise lr decay (e.g. 0.65 for fine-tuning); None = off
    # torch.compile the clean pass, the masked pass + decoder and the frozen target
    # (SupMimModel.compile_parts): "auto" (on for CUDA, off on the CPU), true or false
    compile: bool | str = "auto"
    fsdp: bool = False  # FSDP2 (fully_shard per transformer block) instead of DDP under torchrun
    grad_checkpointing: bool = False  # recompute block activations in backward (less memory)
    lock_wait: float = 0.0  # seconds to wait for another writer of the run directory to exit
    # experiment loggers besides metrics.jsonl: "none", or any of tensorboard, wandb, mlflow
    # ("tensorboard,wandb" or a YAML list); see supmim.loggers
    logger: str | list[str] = "none"


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    mim: MimConfig = field(default_factory=MimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _section_types() -> dict[str, type]:
    return {f.name: f.type for f in fields(RunConfig)}  # type: ignore[misc]


def _field_map(section: Any) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in fields(section)}


def all_keys() -> list[str]:
    """Every valid dotted key, e.g. ``train.lr``."""
    cfg = RunConfig()
    return [f"{s}.{k}" for s in _field_map(cfg) for k in _field_map(getattr(cfg, s))]


def _unknown(key: str) -> ConfigError:
    near = difflib.get_close_matches(key, all_keys(), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(near)}?" if near else ""
    return ConfigError(f"unknown config key '{key}'.{hint} Valid keys: {', '.join(all_keys())}")


def compile_enabled(setting: bool | str, device: Any) -> bool:
    """Whether ``train.compile`` (or ``supmim bench --compile``) is on for ``device`` (a
    torch.device): "auto" compiles on CUDA only; true and false are kept as given."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def set_key(cfg: RunConfig, key: str, value: Any) -> None:
    """Set one dotted key (``train.lr``) with type checking."""
    parts = key.split(".")
    if len(parts) != 2:
        raise _unknown(key)
    section_name, name = parts
    if section_name not in _field_map(cfg):
        raise _unknown(key)
    section = getattr(cfg, section_name)
    fmap = _field_map(section)
    if name not in fmap:
        raise _unknown(key)
    setattr(section, name, coerce(key, value, fmap[name].type))
    if key == "data.train_samples":  # an explicit value is exact (see train_samples_cap)
        cfg.data.train_samples_cap = False


def apply_dict(cfg: RunConfig, values: dict[str, Any], where: str = "config") -> None:
    """Apply a nested ``{section: {key: value}}`` dict (a preset or a YAML file)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping of sections "
                          f"({', '.join(_field_map(cfg))}), got {type(values).__name__}")
    for section, body in values.items():
        if section not in _field_map(cfg):
            raise ConfigError(f"unknown config section '{section}' in {where}; "
                              f"valid sections: {', '.join(_field_map(cfg))}")
        if not isinstance(body, dict):
            raise ConfigError(f"section '{section}' in {where} must be a mapping")
        for key, value in body.items():
            set_key(cfg, f"{section}.{key}", value)


def build_config(preset: str | None = None, file: str | Path | None = None,
                 overrides: list[str] | None = None,
                 extra: dict[str, Any] | None = None) -> RunConfig:
    """Defaults <- preset <- YAML file <- ``extra`` (dotted keys) <- ``key=value`` overrides."""
    cfg = RunConfig()
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset '{preset}'; choices: {', '.join(PRESETS)}")
        apply_dict(cfg, PRESETS[preset], where=f"preset '{preset}'")
        cfg.data.train_samples_cap = "train_samples" in PRESETS[preset].get("data", {})
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        apply_dict(cfg, yaml.safe_load(path.read_text()) or {}, where=str(path))
    for key, value in (extra or {}).items():
        set_key(cfg, key, value)
    for text in overrides or []:
        set_key(cfg, *parse_override(text))
    validate(cfg)
    return cfg


def load_config(path: str | Path) -> RunConfig:
    """Read a resolved ``config.yaml`` written by a run."""
    cfg = RunConfig()
    apply_dict(cfg, yaml.safe_load(Path(path).read_text()) or {}, where=str(path))
    validate(cfg)
    return cfg


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' {message}")


def validate(cfg: RunConfig) -> None:
    """Range and consistency checks; every failure names the key and the valid values."""
    from supmim.targets.registry import target_names  # no torch until a name is looked up

    for key, choices in {**CHOICES, "mim.target": target_names()}.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        shown = choices_text(key) if key in CHOICES else ", ".join(map(str, choices))
        _check(value in choices, key, f"is {value!r}; choose one of {shown}")
    m, k, d, t = cfg.model, cfg.mim, cfg.data, cfg.train
    _check(m.img_size > 0, "model.img_size", "must be positive")
    _check(m.patch_size > 0 and m.img_size % m.patch_size == 0, "model.patch_size",
           f"({m.patch_size}) must divide model.img_size ({m.img_size})")
    _check(m.in_chans in (1, 3), "model.in_chans", "must be 1 (grey) or 3 (RGB)")
    _check(0.0 <= m.drop_path < 1.0, "model.drop_path", "must be in [0, 1)")
    _check(0.0 < k.mask_ratio < 1.0, "mim.mask_ratio", f"is {k.mask_ratio}; must be in (0, 1)")
    _check(k.weight >= 0.0, "mim.weight", "must be >= 0")
    _check(k.decoder_depth >= 0, "mim.decoder_depth", "must be >= 0")
    _check(k.tokenizer_steps >= 1, "mim.tokenizer_steps", "must be >= 1")
    _check(k.soft_temperature > 0.0, "mim.soft_temperature", "must be > 0")
    _check(k.token_loss == "hard" or k.target == "vq", "mim.token_loss",
           f"'soft' needs token targets (mim.target=vq), not mim.target={k.target}")
    _check(k.token_loss == "hard" or k.label_smoothing == 0.0, "mim.label_smoothing",
           "applies to the hard token loss only; set it to 0 with mim.token_loss=soft "
           "(soft targets are already spread over the codebook)")
    _check(k.decoder_depth > 0 or k.mode == "mask_token", "mim.decoder_depth",
           "0 (a linear head) needs mim.mode=mask_token: with dropped patches the masked "
           "positions never reach the encoder")
    _check(k.decoder_dim % k.decoder_heads == 0, "mim.decoder_dim",
           f"({k.decoder_dim}) must be divisible by mim.decoder_heads ({k.decoder_heads})")
    _check(0.0 <= k.label_smoothing < 1.0, "mim.label_smoothing", "must be in [0, 1)")
    grid = (m.img_size // m.patch_size) ** 2
    _check(round(k.mask_ratio * grid) >= 1 and round(k.mask_ratio * grid) < grid,
           "mim.mask_ratio", f"masks {round(k.mask_ratio * grid)} of {grid} patches; "
           "at least one patch must be masked and one visible")
    _check(0.0 <= d.val_fraction < 1.0, "data.val_fraction", "must be in [0, 1)")
    _check(d.train_samples >= 0, "data.train_samples", "must be >= 0 (0 = all)")
    _check(d.batch_size > 0, "data.batch_size", "must be positive")
    _check(d.eval_batch_size > 0, "data.eval_batch_size", "must be positive")
    _check(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    _check(d.device_max_mb >= 0, "data.device_max_mb", "must be >= 0 (MiB)")
    _check(0.0 <= d.hflip <= 1.0, "data.hflip", "must be a probability in [0, 1]")
    _check(0.0 <= d.re_prob <= 1.0, "data.re_prob", "must be a probability in [0, 1]")
    _check(0.0 < d.crop_pct <= 1.0, "data.crop_pct", "must be in (0, 1]")
    for name in ("mean", "std"):
        stats = getattr(d, name)
        _check(stats is None or len(stats) in (1, 3), f"data.{name}",
               "must have 1 or 3 values (one per channel)")
    _check(d.std is None or all(s > 0 for s in d.std), "data.std", "values must be positive")
    _check(t.epochs > 0, "train.epochs", "must be positive")
    _check(t.lr > 0, "train.lr", "must be positive")
    _check(t.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    _check(t.warmup_epochs >= 0, "train.warmup_epochs", "must be >= 0")
    _check(t.clip_grad is None or t.clip_grad > 0, "train.clip_grad", "must be positive or null")
    _check(0.0 <= t.label_smoothing < 1.0, "train.label_smoothing", "must be in [0, 1)")
    _check(t.mixup >= 0 and t.cutmix >= 0, "train.mixup", "mixup/cutmix alphas must be >= 0")
    _check(0.0 < t.ema_decay < 1.0, "train.ema_decay", "must be in (0, 1)")
    _check(t.log_every > 0, "train.log_every", "must be positive")
    _check(t.max_steps >= 0, "train.max_steps", "must be >= 0 (0 = no limit)")
    _check(t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
    _check(t.threads >= 0, "train.threads", "must be >= 0")
    _check(t.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0 (0 = per epoch only)")
    _check(t.max_bad_steps >= 1, "train.max_bad_steps", "must be >= 1")
    _check(t.accum_steps >= 1, "train.accum_steps", "must be >= 1 (1 = no accumulation)")
    _check(t.lock_wait >= 0, "train.lock_wait", "must be >= 0 (seconds; 0 = do not wait)")
    _check(not (t.fsdp and t.ema), "train.fsdp",
           "cannot be combined with train.ema yet (the EMA copy is not sharded); turn one off")
    check_init_from(t.init_from)
    from supmim.loggers.base import logger_names  # names only: packages are checked by train()
    logger_names(t.logger)
    _check(t.layer_decay is None or 0.0 < t.layer_decay <= 1.0, "train.layer_decay",
           "must be in (0, 1] or null (off)")
    for name in ("test_data", "image_column", "label_column"):
        value = getattr(d, name)
        _check(value is None or (value.strip() == value and value != "" and "\n" not in value),
               f"data.{name}", f"is {value!r}; give a non-empty name without surrounding "
               "spaces, or null")
    _check(0.0 <= d.max_bad_fraction < 1.0, "data.max_bad_fraction",
           "must be in [0, 1) (0 = stop at the first unreadable file)")
    _check_token_cache(cfg)
    _check_device_loader(cfg)


def device_unbatchable(cfg: RunConfig) -> tuple[str, str] | None:
    """``(key, why)`` of the first option the device-resident loader cannot batch (it pad-crops
    and flips whole batches on the device), or None when every option can be batched."""
    d = cfg.data
    if d.streaming:
        return "data.streaming", "reads shards as it goes; nothing is decoded onto the device"
    if d.crop not in ("pad", "none"):
        return "data.crop", f"is {d.crop}: it is not batched on the device (pad and none are)"
    if d.rand_augment:
        return "data.rand_augment", "runs per image on the data-loader workers"
    if d.re_prob > 0:
        return "data.re_prob", "(random erasing) runs per image on the data-loader workers"
    if cfg.mim.token_cache:  # both arms of a comparison replay them (a baseline too)
        return "mim.token_cache", "views are replayed on the data-loader workers"
    return None


def _check_device_loader(cfg: RunConfig) -> None:
    """``data.loader=device`` with an option it cannot batch fails here, before any data is
    read; ``auto`` falls back to the workers instead."""
    found = device_unbatchable(cfg) if cfg.data.loader == "device" else None
    if found is not None:
        key, why = found
        _check(False, key, f"{why}, so data.loader=device cannot serve it; set "
               "data.loader=auto or workers, or change the option")


def _check_token_cache(cfg: RunConfig) -> None:
    """What a view cache cannot serve: it stores crop / flip views, which every run on it
    replays (a baseline arm too, so both arms see the same images), and a MIM run reads their
    ids as hard VQ token targets of the un-mixed images."""
    k, d, t = cfg.mim, cfg.data, cfg.train
    if not k.token_cache:
        return
    why = "mim.token_cache stores the crop and flip of each view, so"
    if k.enabled:
        _check(k.target == "vq", "mim.token_cache", f"holds VQ token ids; it needs "
               f"mim.target=vq, not {k.target}")
        _check(k.token_loss == "hard", "mim.token_loss", "must be hard with "
               "mim.token_cache (the cache holds ids, not code distances)")
        _check(t.mixup == 0.0 and t.cutmix == 0.0, "train.mixup",
               "and train.cutmix must be 0 with mim.token_cache: they mix images before "
               "the MIM target, so cached ids would not describe the input")
    _check(not d.rand_augment, "data.rand_augment", f"cannot be replayed: {why} set "
           "data.rand_augment=null or drop mim.token_cache")
    _check(d.re_prob == 0.0, "data.re_prob", f"(random erasing) cannot be replayed: {why} "
           "set data.re_prob=0 or drop mim.token_cache")
    _check(not d.streaming, "data.streaming", "cannot be combined with mim.token_cache (a "
           "cache is indexed by training position); drop one")
