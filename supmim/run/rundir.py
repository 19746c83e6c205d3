"""A run directory: its layout, its checkpoints, and everything needed to rebuild its model.

    RUN/
      config.yaml      the resolved configuration (also stored in every checkpoint)
      classes.json     class names, in label order
      data_stats.json  normalisation (mean, std) and split sizes
      metrics.jsonl    one JSON object per logged step ("train"), skipped step ("skip") and
                       epoch ("epoch")
      summary.json     final metrics, written when the run ends
      bad_files.txt    unreadable images that were skipped (only when there were any)
      tokenizer/       the run's own copy of its VQ tokenizer (target "vq")
      checkpoints/     epoch_NNNN/, step_NNNNNNNN/ (the latest ones) and best/

Every checkpoint's ``meta.json`` describes itself (format ``supmim.checkpoint`` version 2):
the resolved config, the class names, the normalisation and the MIM target's spec, beside
the epoch, step and evaluation. :meth:`RunDir.build_model` and :meth:`RunDir.build_encoder`
rebuild a model from that alone, so training, export, evaluation, visualisation and
``train.init_from`` cannot drift apart. Checkpoints written before version 2 hold only the
counters; :mod:`supmim.run.legacy` fills in the rest from the side files, in one place.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from supmim.config import RunConfig, apply_dict, save_config, validate
from supmim.errors import CheckpointError, ConfigError, TrainingError
from supmim.files import atomic_write_text, write_json
from supmim.run import checkpoint as ckpt
from supmim.run.legacy import fill_meta

if TYPE_CHECKING:
    import torch
    from timm.models.vision_transformer import VisionTransformer

    from supmim.data.splits import RunData
    from supmim.models.joint import SupMimModel

CHECKPOINT_FORMAT = "supmim.checkpoint"
CHECKPOINT_VERSION = 2
WEIGHTS = ("auto", "raw", "ema")
_NOTED: set[Path] = set()  # unverified (pre-digest) checkpoints already noted  # "auto": the EMA weights when the run kept an EMA


@dataclass
class CheckpointInfo:
    """What a checkpoint says about itself (see the module docstring)."""

    folder: Path
    epoch: int
    step: int
    end_of_epoch: bool
    eval: dict[str, float]
    config: RunConfig
    classes: list[str] | None
    data: dict[str, Any]  # mean, std, split names and sizes
    target: dict[str, Any] | None  # {"name", "options"}; None without MIM
    legacy: bool = False  # written before the format was versioned
    meta: dict[str, Any] = field(default_factory=dict, repr=False)


def data_stats(data: RunData) -> dict[str, Any]:
    """The normalisation and split sizes of a run's data (``data_stats.json``)."""
    return {"mean": list(data.mean), "std": list(data.std), "train_size": len(data.train),
            "eval_split": data.eval_split,
            "eval_size": len(data.eval) if data.eval is not None else 0,
            "test_split": data.test_split,
            "test_size": len(data.test) if data.test is not None else 0}


def config_from_dict(values: dict[str, Any], where: str) -> RunConfig:
    """A validated :class:`RunConfig` from its ``to_dict()`` form."""
    cfg = RunConfig()
    apply_dict(cfg, values, where=where)
    validate(cfg)
    return cfg


class RunDir:
    """One run directory (it need not exist yet: a new run creates it)."""

    CONFIG, CLASSES, DATA_STATS = "config.yaml", "classes.json", "data_stats.json"
    METRICS, SUMMARY, BAD_FILES = "metrics.jsonl", "summary.json", "bad_files.txt"
    TOKENIZER, CHECKPOINTS, BEST = "tokenizer", "checkpoints", "best"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir('{self.path}')"

    @staticmethod
    def is_run(path: str | Path) -> bool:
        """Whether ``path`` looks like a supmim run directory (config + checkpoints)."""
        p = Path(path)
        return (p / RunDir.CONFIG).is_file() and (p / RunDir.CHECKPOINTS).is_dir()

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run; CheckpointError when ``path`` is not one."""
        if not (Path(path) / cls.CONFIG).is_file():
            raise CheckpointError(f"'{path}' is not a supmim run directory (no config.yaml)")
        return cls(path)

    # ---------------------------------------------------------------- layout
    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def bad_files_path(self) -> Path:
        return self.path / self.BAD_FILES

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / self.TOKENIZER

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / self.CHECKPOINTS

    def has_checkpoints(self) -> bool:
        """Any checkpoint folder, intact or broken: "auto" must not start over on top of a
        broken one."""
        return bool(ckpt.checkpoint_folders(self.path))

    def holds_run(self) -> bool:
        """A run has started here (its log exists)."""
        return self.metrics_path.exists()

    def forget_unsaved(self) -> None:
        """Remove the log lines of a run killed before its first checkpoint."""
        for name in (self.METRICS, self.BAD_FILES):
            (self.path / name).unlink(missing_ok=True)

    def resolve_resume(self, resume: bool | str, *, writer: bool = True) -> bool:
        """Whether to continue the run here. ``resume``: False (a new run; the directory must
        not hold one), True (a checkpoint must exist) or "auto" (continue when there is a
        checkpoint; the log of a run killed before its first one is removed when ``writer``)."""
        has_ckpt = self.has_checkpoints()
        if resume == "auto":
            resume = has_ckpt
            if not has_ckpt and writer:
                self.forget_unsaved()
        if resume and not has_ckpt:
            raise CheckpointError(f"--resume: no checkpoint found in '{self.checkpoints_dir}'")
        if not resume and self.holds_run():
            raise ConfigError(f"run directory '{self.path}' already holds a run; pass --resume "
                              "to continue it, or choose a new --out")
        return bool(resume)

    # ---------------------------------------------------------------- writing
    def write_start(self, cfg: RunConfig, data: RunData) -> None:
        """The side files of a new run: config, class names, data statistics."""
        self.path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.path / self.CONFIG)
        atomic_write_text(self.path / self.CLASSES, json.dumps(list(data.classes)))
        write_json(self.path / self.DATA_STATS, data_stats(data))

    def describe(self, cfg: RunConfig, data: RunData) -> dict[str, Any]:
        """The part of every checkpoint's metadata that does not change during the run.

        A tokenizer inside the run directory is recorded by its relative path, so a moved
        or copied run still finds it."""
        from supmim.targets import target_spec

        values = cfg.to_dict()
        values["mim"]["tokenizer"] = self._relative(values["mim"]["tokenizer"])
        target = None
        if cfg.mim.enabled:
            target = target_spec(cfg.mim)
            if "tokenizer" in target["options"]:
                target["options"]["tokenizer"] = self._relative(target["options"]["tokenizer"])
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": values,
                "classes": list(data.classes), "data": data_stats(data), "target": target}

    def save_checkpoint(self, described: dict[str, Any], weights: dict[str, torch.Tensor],
                        state: dict[str, Any], ema: dict[str, torch.Tensor] | None, *,
                        epoch: int, step: int, end_of_epoch: bool, eval_metrics: dict[str, float],
                        best: bool = False, keep: int = 2) -> Path:
        """Write a checkpoint (epoch ``epoch`` 1-based, or mid-epoch at ``step``), copy it to
        ``best/`` when asked, and prune all but the ``keep`` latest; returns its folder."""
        meta = {**described, "epoch": epoch, "step": step, "end_of_epoch": end_of_epoch,
                "eval": eval_metrics}
        folder = ckpt.epoch_folder(self.path, epoch) if end_of_epoch \
            else ckpt.step_folder(self.path, step)
        ckpt.save_checkpoint(folder, weights, state, meta, ema)
        if best:
            ckpt.save_checkpoint(self.checkpoints_dir / self.BEST, weights, state, meta, ema)
        ckpt.prune_checkpoints(self.path, keep)
        return folder

    def append_metrics(self, record: dict[str, Any]) -> None:
        """One line of ``metrics.jsonl``; TrainingError when the disk refuses it (the lines
        and checkpoints before it are intact)."""
        try:
            with open(self.metrics_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError as err:
            raise TrainingError(f"could not append to '{self.metrics_path}' ({err}); the "
                                f"last checkpoint '{self.latest()}' is intact. Free disk space "
                                f"and continue with `supmim train --out {self.path} --resume "
                                "auto`") from err

    def trim_metrics(self, step: int) -> None:
        """Drop log lines written after ``step`` (a resumed run redoes them)."""
        if not self.metrics_path.is_file():
            return
        kept = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                if int(json.loads(line).get("step", 0)) <= step:
                    kept.append(line)
            except ValueError:  # a line cut short by the crash
                continue
        atomic_write_text(self.metrics_path, "".join(f"{line}\n" for line in kept))

    def write_summary(self, summary: dict[str, Any]) -> Path:
        try:
            return write_json(self.path / self.SUMMARY, summary)
        except OSError as err:
            raise TrainingError(f"could not write '{self.path / self.SUMMARY}' ({err}); the "
                                f"final checkpoint '{self.latest()}' is intact. Free disk "
                                f"space and run `supmim train --out {self.path} --resume auto` "
                                "to evaluate and write it again") from err

    # ---------------------------------------------------------------- checkpoints
    def checkpoints(self) -> list[Path]:
        """Complete epoch and step checkpoints, oldest first."""
        return ckpt.list_checkpoints(self.path)

    def latest(self) -> Path | None:
        return ckpt.latest_checkpoint(self.path)

    def checkpoint(self, which: str = "last") -> Path:
        """The folder of ``which``: "last" (the latest), "best" (best on val), or the name of
        a folder under ``checkpoints/``."""
        if which in ("last", "latest"):
            folder = self.latest()
        else:
            folder = self.checkpoints_dir / which
        if folder is None or not (folder / "model.safetensors").is_file():
            have = ", ".join(p.name for p in self.checkpoints()) or "none"
            raise CheckpointError(f"no '{which}' checkpoint in '{self.checkpoints_dir}' "
                                  f"(complete checkpoints: {have}); has the run finished an "
                                  "epoch?")
        return folder

    def load(self, which: str = "last", *, verify: bool = True
             ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor] | None]:
        """``(weights, train_state, ema_weights)`` of a checkpoint, verified against its
        digests first (unless just verified: ``verify=False``); a broken one is refused,
        naming the intact ones."""
        folder = self.checkpoint(which)
        if not verify:
            return ckpt.load_checkpoint(folder, verify=False)
        try:
            verified = ckpt.verify_checkpoint(folder)
        except CheckpointError as err:
            good = [p.name for p in self.checkpoints() if p != folder and ckpt.is_intact(p)]
            raise CheckpointError(
                f"checkpoint '{folder}' is broken: {err}. Intact checkpoints: "
                f"{', '.join(good) or 'none'} (pick one with --checkpoint NAME; `supmim check "
                f"{self.path}` verifies them all)") from None
        if not verified and folder not in _NOTED:
            _NOTED.add(folder)
            print(f"supmim: note: checkpoint '{folder}' was written before checkpoints "
                  "recorded digests; it is loaded unverified", file=sys.stderr)
        return ckpt.load_checkpoint(folder, verify=False)

    def newest_intact(self) -> tuple[Path | None, list[tuple[Path, str]]]:
        """See :func:`supmim.run.checkpoint.newest_intact`."""
        return ckpt.newest_intact(self.path)

    def set_aside_broken(self, broken: list[tuple[Path, str]], *, resumed: Path,
                         step: int) -> list[str]:
        """See :func:`supmim.run.checkpoint.set_aside_broken`."""
        return ckpt.set_aside_broken(broken, resumed=resumed, step=step)

    def info(self, which: str = "last") -> CheckpointInfo:
        """What checkpoint ``which`` says about itself; older checkpoints through
        :func:`supmim.run.legacy.fill_meta`."""
        folder = self.checkpoint(which)
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(f"cannot read '{folder / 'meta.json'}': {err}") from err
        legacy = meta.get("format") != CHECKPOINT_FORMAT
        if legacy:
            meta = fill_meta(meta, cfg=self.yaml_config(), classes_path=self.file(self.CLASSES),
                             stats_path=self.file(self.DATA_STATS))
        elif int(meta.get("version", 0)) > CHECKPOINT_VERSION:
            raise CheckpointError(f"checkpoint '{folder}' has format version {meta['version']}; "
                                  f"this supmim reads up to {CHECKPOINT_VERSION}: upgrade supmim")
        cfg = config_from_dict(meta["config"], where=str(folder / "meta.json"))
        cfg.mim.tokenizer = self._absolute(cfg.mim.tokenizer)
        target = meta.get("target")
        if target and "tokenizer" in target.get("options", {}):
            target = {**target, "options": {**target["options"], "tokenizer":
                                            self._absolute(target["options"]["tokenizer"])}}
        return CheckpointInfo(folder=folder, epoch=int(meta["epoch"]), step=int(meta["step"]),
                              end_of_epoch=bool(meta.get("end_of_epoch", True)),
                              eval=dict(meta.get("eval") or {}), config=cfg,
                              classes=meta.get("classes"), data=dict(meta.get("data") or {}),
                              target=target, legacy=legacy, meta=meta)

    def config(self, which: str | None = "last") -> RunConfig:
        """The run's configuration: from checkpoint ``which`` when there is one (None: from
        ``config.yaml``), else from ``config.yaml``."""
        if which is not None and self.checkpoints():
            return self.info(which).config
        return self.yaml_config()

    def yaml_config(self) -> RunConfig:
        path = self.path / self.CONFIG
        if not path.is_file():
            raise CheckpointError(f"'{self.path}' is not a supmim run directory (no config.yaml)")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise CheckpointError(f"cannot read '{path}': {err}") from err
        cfg = config_from_dict(values, where=str(path))
        cfg.mim.tokenizer = self._absolute(cfg.mim.tokenizer)
        return cfg

    # ---------------------------------------------------------------- rebuilding
    def encoder_state(self, which: str = "last", weights: str = "auto") -> dict[str, torch.Tensor]:
        """The encoder's weights under timm's names (no ``encoder.`` prefix, no decoder).

        weights: "raw" (the trained weights), "ema" (the EMA copy) or "auto" (EMA when the
        run kept one)."""
        if weights not in WEIGHTS:
            raise ConfigError(f"weights '{weights}': choose one of {', '.join(WEIGHTS)}")
        model_state, _, ema_state = self.load(which)
        if weights == "ema" and ema_state is None:
            raise CheckpointError(f"run '{self.path}' kept no EMA weights (train.ema was off)")
        if weights != "raw" and ema_state is not None:
            return ema_state
        return {k[len("encoder."):]: v for k, v in model_state.items()
                if k.startswith("encoder.")}

    def build_encoder(self, which: str = "last", weights: str = "auto") -> VisionTransformer:
        """The run's timm encoder (with its head) in eval mode, trained weights loaded."""
        from supmim.models import create_vit

        info = self.info(which)
        state = self.encoder_state(which, weights)
        num_classes = int(state["head.weight"].shape[0]) if "head.weight" in state else 0
        vit = create_vit(info.config.model, num_classes=num_classes)
        vit.load_state_dict(state, strict=True)
        return vit.eval()

    def classes(self, which: str = "last") -> list[str]:
        """Class names of the head (numbers when the run did not record names)."""
        info = self.info(which)
        if info.classes:
            return [str(c) for c in info.classes]
        size = self.encoder_state(which, "raw").get("head.weight")
        return [str(i) for i in range(0 if size is None else int(size.shape[0]))]

    def build_target(self, which: str = "last") -> torch.nn.Module | None:
        """The frozen MIM target the run trained with (None without MIM)."""
        from supmim.targets import build_from_spec

        info = self.info(which)
        if info.target is None:
            return None
        m = info.config.model
        return build_from_spec(info.target, img_size=m.img_size, patch_size=m.patch_size,
                               in_chans=m.in_chans)

    def build_model(self, which: str = "last", *, device: str | torch.device = "cpu"
                    ) -> SupMimModel:
        """The whole joint model (encoder, MIM decoder, frozen target) with checkpoint
        ``which``'s weights, in eval mode: the same construction as training."""
        from supmim.models.factory import build_model

        info = self.info(which)
        weights = self.load(which)[0]
        num_classes = int(weights["encoder.head.weight"].shape[0]) \
            if "encoder.head.weight" in weights else len(info.classes or [])
        model = build_model(info.config, num_classes=num_classes, mean=info.data["mean"],
                            std=info.data["std"], target=self.build_target(which))
        result = model.load_state_dict(weights, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("target.")]
        if missing or result.unexpected_keys:
            raise CheckpointError(f"checkpoint '{info.folder}' does not fit its own config: "
                                  f"missing {missing[:5]}, unexpected "
                                  f"{result.unexpected_keys[:5]}")
        return model.to(device).eval()

    def data_config(self, which: str = "last") -> dict[str, Any]:
        """The evaluation preprocessing in timm's data-config terms."""
        info = self.info(which)
        return timm_data_config(info.config, info.data["mean"], info.data["std"])

    # ---------------------------------------------------------------- paths in the config
    def _relative(self, value: str | None) -> str | None:
        """A path inside the run directory as relative to it; anything else unchanged."""
        if not value or value == "auto":
            return value
        try:
            return Path(value).resolve().relative_to(self.path.resolve()).as_posix()
        except ValueError:
            return value

    def _absolute(self, value: str | None) -> str | None:
        """The inverse of :meth:`_relative`: the run's own copy of a tokenizer wins, so a
        run directory that moved (its config holds the old absolute path) still loads."""
        if not value or value == "auto":
            return value
        own = self.tokenizer_dir
        if (own / "tokenizer.json").is_file():  # the copy the run trained with
            return str(own)
        if not Path(value).is_absolute() and (self.path / value).exists():
            return str(self.path / value)
        return value


def timm_data_config(cfg: RunConfig, mean: list[float], std: list[float]) -> dict[str, Any]:
    """A run's evaluation preprocessing in timm's data-config terms."""
    m, d = cfg.model, cfg.data
    return {"input_size": (m.in_chans, m.img_size, m.img_size), "mean": tuple(mean),
            "std": tuple(std), "crop_pct": d.crop_pct, "crop_mode": "center",
            "interpolation": d.interpolation}
