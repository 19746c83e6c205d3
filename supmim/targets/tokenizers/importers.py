"""Import public VQGAN checkpoints into supmim's tokenizer folder format.

Formats (``supmim tokenizer import SRC --format F --out DIR``):

- ``maskgit-bin``: the PyTorch port of MaskGIT's tokenizer used by open-muse and TiTok
  (``maskgit-vqgan-imagenet-f16-256.bin``): keys ``encoder.down.{i}.block.{j}.conv1.weight``,
  ``encoder.mid.{j}``, ``decoder.up.{i}.upsample_conv``, ``quantize.embedding.weight``.
- ``mage-ckpt``: MAGE's converted MaskGIT tokenizer (``vqgan_jax_strongaug.ckpt``), a
  taming-style layout without attention or quant convs: ``encoder.mid.block_1``,
  ``decoder.up.{i}.upsample.conv``; the state dict may sit under ``"state_dict"``.
- ``maskgit-flax``: MaskGIT's own Flax msgpack checkpoint (``tokenizer_imagenet256_checkpoint``):
  ``params/encoder/ResBlock_{k}/Conv_0/kernel`` (HWIO) etc., converted without JAX.
- ``taming-ckpt``: a taming-transformers Lightning checkpoint (``vqgan_imagenet_f16_1024``
  ``last.ckpt``); ``loss.*`` (LPIPS, discriminator) is dropped, everything else must map.

Each importer maps every source key to supmim's module names (an unknown key is an error, not
silently dropped), infers the architecture from the tensor shapes, loads strictly, and writes
``tokenizer.safetensors`` + ``tokenizer.json`` with the source's sha256 in the metadata.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from supmim.errors import CheckpointError, ConfigError
from supmim.targets.tokenizers.third_party import (check_sha256, find_state_dict, flatten_tree,
                                               load_flax_msgpack, load_torch_file)
from supmim.targets.tokenizers.vqgan import VQGAN, VQGANConfig

FORMATS = ("maskgit-bin", "mage-ckpt", "maskgit-flax", "taming-ckpt")
FORMAT_HINT = f"Is --format right? (formats: {', '.join(FORMATS)})"


def _n(count: int, noun: str) -> str:
    """``1 key``, ``2 keys``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"

_RES = r"(norm1|conv1|norm2|conv2)\.(weight|bias)"
# (source pattern, supmim name) per format; patterns must match the whole key.
_RULES: dict[str, list[tuple[str, str]]] = {
    "maskgit-bin": [
        (r"encoder\.conv_in\.weight", r"encoder.conv_in.weight"),
        (rf"encoder\.down\.(\d+)\.block\.(\d+)\.{_RES}", r"encoder.stages.\1.blocks.\2.\3.\4"),
        (r"encoder\.down\.(\d+)\.block\.(\d+)\.nin_shortcut\.weight",
         r"encoder.stages.\1.blocks.\2.shortcut.weight"),
        (rf"(encoder|decoder)\.mid\.(\d+)\.{_RES}", r"\1.mid.blocks.\2.\3.\4"),
        (r"(encoder|decoder)\.mid\.(\d+)\.nin_shortcut\.weight", r"\1.mid.blocks.\2.shortcut.weight"),
        (r"(encoder|decoder)\.(norm_out|conv_out|conv_in)\.(weight|bias)", r"\1.\2.\3"),
        (rf"decoder\.up\.(\d+)\.block\.(\d+)\.{_RES}", r"decoder.stages.\1.blocks.\2.\3.\4"),
        (r"decoder\.up\.(\d+)\.block\.(\d+)\.nin_shortcut\.weight",
         r"decoder.stages.\1.blocks.\2.shortcut.weight"),
        (r"decoder\.up\.(\d+)\.upsample_conv\.(weight|bias)", "UP:\\1:\\2"),
        (r"quantize\.embedding\.weight", r"quantizer.weight"),
    ],
}
_TAMING_COMMON = [
    (rf"(encoder|decoder)\.(down|up)\.(\d+)\.block\.(\d+)\.{_RES}", "STAGE:\\1:\\3:\\4:\\5.\\6"),
    (r"(encoder|decoder)\.(down|up)\.(\d+)\.block\.(\d+)\.nin_shortcut\.(weight|bias)",
     "STAGE:\\1:\\3:\\4:shortcut.\\5"),
    (r"(encoder|decoder)\.mid\.block_1\.(.+)", r"\1.mid.blocks.0.\2"),
    (r"(encoder|decoder)\.mid\.block_2\.(.+)", r"\1.mid.blocks.1.\2"),
    (r"(encoder|decoder)\.(norm_out|conv_out|conv_in)\.(weight|bias)", r"\1.\2.\3"),
    (r"decoder\.up\.(\d+)\.upsample\.conv\.(weight|bias)", "UP:\\1:\\2"),
    (r"quantize\.embedding\.weight", r"quantizer.weight"),
]
_ATTN = r"(norm|q|k|v)\.(weight|bias)"
_RULES["mage-ckpt"] = list(_TAMING_COMMON)
_RULES["taming-ckpt"] = _TAMING_COMMON + [
    (rf"(encoder|decoder)\.(down|up)\.(\d+)\.attn\.(\d+)\.{_ATTN}", "ATTN:\\1:\\3:\\4:\\5.\\6"),
    (r"(encoder|decoder)\.(down|up)\.(\d+)\.attn\.(\d+)\.proj_out\.(weight|bias)",
     "ATTN:\\1:\\3:\\4:proj.\\5"),
    (rf"(encoder|decoder)\.mid\.attn_1\.{_ATTN}", r"\1.mid.attn.\2.\3"),
    (r"(encoder|decoder)\.mid\.attn_1\.proj_out\.(weight|bias)", r"\1.mid.attn.proj.\2"),
    (r"encoder\.down\.(\d+)\.downsample\.conv\.(weight|bias)", r"encoder.downs.\1.conv.\2"),
    (r"(quant_conv|post_quant_conv)\.(weight|bias)", r"\1.\2"),
]
# Source keys that are not part of the tokenizer: dropped and reported.
_IGNORED_PREFIXES = {"taming-ckpt": ("loss.",), "mage-ckpt": ("loss.",)}


def _finish_name(name: str) -> str:
    """Resolve the placeholders the rules emit (the source's level numbering is ours)."""
    kind, _, rest = name.partition(":")
    if kind == "UP":  # decoder.up.{i}.upsample* follows level i -> our ups[i - 1]
        level, param = rest.split(":")
        if int(level) < 1:
            raise KeyError(name)
        return f"decoder.ups.{int(level) - 1}.conv.{param}"
    if kind == "STAGE":
        part, level, j, param = rest.split(":")
        return f"{part}.stages.{level}.blocks.{j}.{param}"
    if kind == "ATTN":
        part, level, j, param = rest.split(":")
        return f"{part}.stages.{level}.attns.{j}.{param}"
    return name


def map_state_dict(state: Mapping[str, Tensor], fmt: str) -> tuple[dict[str, Tensor], list[str]]:
    """Source keys -> supmim keys. Returns (mapped tensors, dropped keys); CheckpointError
    naming every key that matches no rule, so nothing is silently lost."""
    rules = [(re.compile(p), r) for p, r in _RULES[fmt]]
    ignored_prefixes = _IGNORED_PREFIXES.get(fmt, ())
    mapped: dict[str, Tensor] = {}
    dropped, unknown = [], []
    for key, value in state.items():
        if key.startswith(ignored_prefixes):
            dropped.append(key)
            continue
        for pattern, repl in rules:
            if pattern.fullmatch(key):
                try:
                    mapped[_finish_name(pattern.sub(repl, key))] = value
                except KeyError:
                    unknown.append(key)
                break
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else "")
        raise CheckpointError(f"{_n(len(unknown), 'key')} of this checkpoint "
                              f"{'has' if len(unknown) == 1 else 'have'} no place in a {fmt} "
                              f"VQGAN: {shown}. {FORMAT_HINT}")
    return mapped, dropped


def _count(keys: set[str], prefix: str) -> int:
    """Number of consecutive indices i with some key starting with f'{prefix}{i}.'"""
    n = 0
    while any(k.startswith(f"{prefix}{n}.") for k in keys):
        n += 1
    return n


def infer_config(state: Mapping[str, Tensor], arch: str) -> VQGANConfig:
    """The :class:`VQGANConfig` whose module tree has exactly these (supmim) keys' shapes."""
    keys = set(state)
    try:
        conv_in = state["encoder.conv_in.weight"]
        levels = _count(keys, "encoder.stages.")
        ch = int(conv_in.shape[0])
        mult = []
        for i in range(levels):
            width = int(state[f"encoder.stages.{i}.blocks.0.conv1.weight"].shape[0])
            if width % ch:
                raise ValueError(f"level {i} width {width} is not a multiple of {ch}")
            mult.append(width // ch)
        codebook = state["quantizer.weight"]
        cfg = VQGANConfig(
            arch=arch, in_chans=int(conv_in.shape[1]), ch=ch, ch_mult=mult,
            num_res_blocks=_count(keys, "encoder.stages.0.blocks."),
            mid_blocks=_count(keys, "encoder.mid.blocks."),
            z_channels=int(state["encoder.conv_out.weight"].shape[0]),
            embed_dim=int(codebook.shape[1]), codebook_size=int(codebook.shape[0]),
            attn_levels=[i for i in range(levels) if f"encoder.stages.{i}.attns.0.q.weight" in keys],
            mid_attn="encoder.mid.attn.q.weight" in keys)
        cfg.validate()
    except (KeyError, ValueError, IndexError, ConfigError) as e:
        raise CheckpointError(f"cannot infer a {arch} VQGAN architecture from this checkpoint "
                              f"({e}): it is not a complete {arch} tokenizer state dict. "
                              f"{FORMAT_HINT}") from e
    return cfg


def build_from_state(state: Mapping[str, Tensor], arch: str) -> VQGAN:
    """A VQGAN holding ``state`` (supmim keys), loaded strictly with a clear error."""
    model = VQGAN(infer_config(state, arch))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state)
                   if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or extra or wrong:
        parts = [f"{name}: {', '.join(ks[:6])}{' ...' if len(ks) > 6 else ''}"
                 for name, ks in (("missing", missing), ("unexpected", extra),
                                  ("wrong shape", wrong)) if ks]
        raise CheckpointError(f"the checkpoint does not fit the inferred {arch} VQGAN "
                              f"({model.config.ch} x {model.config.ch_mult}): "
                              + "; ".join(parts) + f". {FORMAT_HINT}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------- Flax


def _flax_kernel(a: np.ndarray) -> Tensor:
    """Flax conv kernel (H, W, in, out) -> torch (out, in, H, W); dense (in, out) -> (out, in)."""
    t = torch.from_numpy(np.ascontiguousarray(a)).float()
    if t.ndim == 4:
        return t.permute(3, 2, 0, 1).contiguous()
    if t.ndim == 2:
        return t.t().contiguous()
    raise CheckpointError(f"unexpected Flax kernel of shape {tuple(a.shape)}")


def _find_vqvae(tree: Mapping[str, Any], path: str = "") -> tuple[Mapping[str, Any], str]:
    """The sub-tree holding MaskGIT's ``encoder``, ``decoder`` and ``quantizer`` params."""
    if {"encoder", "decoder", "quantizer"} <= set(tree):
        return tree, path
    for k, v in tree.items():
        if isinstance(v, Mapping):
            try:
                return _find_vqvae(v, f"{path}/{k}" if path else str(k))
            except KeyError:
                continue
    raise KeyError("no sub-tree with 'encoder', 'decoder' and 'quantizer'")


def _res_block(params: Mapping[str, np.ndarray], dst: str, out: dict[str, Tensor],
               used: set[str], src: str) -> None:
    names = {"GroupNorm_0": "norm1", "Conv_0": "conv1", "GroupNorm_1": "norm2", "Conv_1": "conv2",
             "Conv_2": "shortcut"}
    for leaf, value in params.items():
        module, _, param = leaf.partition("/")
        if module not in names or param not in ("kernel", "bias", "scale"):
            raise KeyError(f"{src}/{leaf}")
        name = f"{dst}.{names[module]}"
        if module.startswith("GroupNorm"):
            out[f"{name}.{'weight' if param == 'scale' else 'bias'}"] = \
                torch.from_numpy(np.ascontiguousarray(value)).float()
        else:
            out[f"{name}.{'weight' if param == 'kernel' else 'bias'}"] = \
                _flax_kernel(value) if param == "kernel" else torch.from_numpy(value.copy()).float()
        used.add(f"{src}/{leaf}")


def _group(flat: Mapping[str, np.ndarray], prefix: str) -> dict[str, dict[str, np.ndarray]]:
    """{'ResBlock_3': {'Conv_0/kernel': a, ...}, 'Conv_0': {'kernel': a}} under ``prefix``."""
    groups: dict[str, dict[str, np.ndarray]] = {}
    for key, value in flat.items():
        if key.startswith(prefix + "/"):
            head, _, rest = key[len(prefix) + 1:].partition("/")
            groups.setdefault(head, {})[rest] = value
    return groups


def _modules(groups: Mapping[str, Any], kind: str) -> list[str]:
    """Flax auto-names ``{kind}_{n}`` sorted by n (creation order)."""
    found = [k for k in groups if re.fullmatch(rf"{kind}_\d+", k)]
    return sorted(found, key=lambda k: int(k.split("_")[1]))


def _plain(module: Mapping[str, np.ndarray], dst: str, out: dict[str, Tensor], used: set[str],
           src: str) -> None:
    """A Flax Conv/GroupNorm's params -> ``dst.weight`` / ``dst.bias``."""
    for param, value in module.items():
        if param == "kernel":
            out[f"{dst}.weight"] = _flax_kernel(value)
        elif param == "scale":
            out[f"{dst}.weight"] = torch.from_numpy(np.ascontiguousarray(value)).float()
        elif param == "bias":
            out[f"{dst}.bias"] = torch.from_numpy(np.ascontiguousarray(value)).float()
        else:
            raise KeyError(f"{src}/{param}")
        used.add(f"{src}/{param}")


def convert_maskgit_flax(tree: Mapping[str, Any]) -> tuple[dict[str, Tensor], list[str]]:
    """MaskGIT's Flax VQVAE params -> (supmim state dict, unused leaves outside the VQVAE).

    Flax names modules by type and creation order inside each ``nn.compact`` call:
    encoder ``Conv_0`` (in), ``ResBlock_{level * n + j}`` then the mid ``ResBlock``s,
    ``GroupNorm_0``, ``Conv_1`` (out); decoder ``Conv_0`` (in), mid ``ResBlock``s first, then
    the levels from the lowest resolution up, ``Conv_1..Conv_{L-1}`` after each upsampling,
    ``GroupNorm_0``, ``Conv_L`` (out). Inside a ResBlock: ``GroupNorm_0``, ``Conv_0``,
    ``GroupNorm_1``, ``Conv_1`` and ``Conv_2`` (the 1x1 shortcut, when channels change).
    """
    try:
        vq, where = _find_vqvae(tree)
    except KeyError as e:
        raise CheckpointError(f"no MaskGIT VQVAE in this Flax checkpoint ({e.args[0]}): expected "
                              f"params with 'encoder', 'decoder' and 'quantizer'") from e
    flat = flatten_tree(vq)
    # leaves beside the VQVAE (e.g. optimizer state in a train-state checkpoint) are reported
    others = sorted(k for k in flatten_tree(tree) if not k.startswith(f"{where}/")) \
        if where else []
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    try:
        enc, dec = _group(flat, "encoder"), _group(flat, "decoder")
        dec_convs = _modules(dec, "Conv")
        levels = len(dec_convs) - 1  # conv_in, one per upsampling (levels - 1), conv_out
        enc_blocks, dec_blocks = _modules(enc, "ResBlock"), _modules(dec, "ResBlock")
        if levels < 1 or len(enc_blocks) != len(dec_blocks) or len(enc_blocks) % (levels + 1):
            raise KeyError(f"{len(enc_blocks)} encoder / {len(dec_blocks)} decoder ResBlocks and "
                           f"{len(dec_convs)} decoder Convs do not form a MaskGIT VQVAE")
        n = len(enc_blocks) // (levels + 1)  # res blocks per level = mid blocks
        for k, name in enumerate(enc_blocks):
            dst = (f"encoder.stages.{k // n}.blocks.{k % n}" if k < levels * n
                   else f"encoder.mid.blocks.{k - levels * n}")
            _res_block(enc[name], dst, out, used, f"encoder/{name}")
        for k, name in enumerate(dec_blocks):
            if k < n:
                dst = f"decoder.mid.blocks.{k}"
            else:
                m = k - n
                dst = f"decoder.stages.{levels - 1 - m // n}.blocks.{m % n}"
            _res_block(dec[name], dst, out, used, f"decoder/{name}")
        enc_plain = {"Conv_0": "encoder.conv_in", "Conv_1": "encoder.conv_out",
                     "GroupNorm_0": "encoder.norm_out"}
        dec_plain = {"Conv_0": "decoder.conv_in", f"Conv_{levels}": "decoder.conv_out",
                     "GroupNorm_0": "decoder.norm_out"}
        dec_plain.update({f"Conv_{c}": f"decoder.ups.{levels - 1 - c}.conv"
                          for c in range(1, levels)})
        for part, groups, plain in (("encoder", enc, enc_plain), ("decoder", dec, dec_plain)):
            for name, module in groups.items():
                if name.startswith("ResBlock_"):
                    continue
                if name not in plain:
                    raise KeyError(f"{part}/{name}")
                _plain(module, plain[name], out, used, f"{part}/{name}")
        out["quantizer.weight"] = torch.from_numpy(
            np.ascontiguousarray(flat["quantizer/codebook"])).float()
        used.add("quantizer/codebook")
    except KeyError as e:
        raise CheckpointError(f"this Flax checkpoint does not have MaskGIT's tokenizer layout: "
                              f"{e.args[0]}") from e
    unused = sorted(set(flat) - used)
    if unused:
        raise CheckpointError(f"{_n(len(unused), 'Flax param')} not converted: "
                              f"{', '.join(unused[:8])}: is this a MaskGIT VQVAE tokenizer?")
    return out, others


# ----------------------------------------------------------------------------- entry points


def _torch_source(fmt: str) -> Callable[[Path], tuple[dict[str, Tensor], dict[str, Any]]]:
    def read(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
        obj, ignored_globals = load_torch_file(path)
        state, dropped = map_state_dict(find_state_dict(obj, path), fmt)
        return state, {"ignored_keys": len(dropped),
                       "ignored_key_prefixes": sorted({k.split(".")[0] for k in dropped}),
                       "ignored_pickle_globals": ignored_globals}
    return read


def _flax_source(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    state, others = convert_maskgit_flax(load_flax_msgpack(path))
    return state, {"ignored_keys": len(others)}


_ARCH = {"maskgit-bin": "maskgit", "mage-ckpt": "maskgit", "maskgit-flax": "maskgit",
         "taming-ckpt": "taming"}


def import_checkpoint(src: str | Path, fmt: str, *, sha256: str | None = None,
                      img_size: int = 256) -> VQGAN:
    """Read a public VQGAN checkpoint (see the module docstring for ``fmt``) into a
    :class:`VQGAN`, after checking its sha256 when ``sha256`` is given. ``metadata`` records
    the source file, format, sha256 and what was ignored."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown checkpoint format {fmt!r}: choose one of {', '.join(FORMATS)}")
    # checked before anything is read or written: a folder with img_size 0 would never load
    if int(img_size) < 1:
        raise ConfigError(f"--img-size {img_size}: give the resolution the tokenizer was "
                          "trained at, in pixels (e.g. 256)")
    path = Path(src)
    digest = check_sha256(path, sha256)
    reader = _flax_source if fmt == "maskgit-flax" else _torch_source(fmt)
    state, report = reader(path)
    model = build_from_state(state, _ARCH[fmt])
    model.config.img_size = int(img_size)
    model.config.validate()  # whatever loading the folder would refuse, refuse before writing
    model.metadata = {"source": path.name, "source_format": fmt, "source_sha256": digest,
                      "sha256_verified": sha256 is not None, **report}
    return model


def import_tokenizer(src: str | Path, fmt: str, out_dir: str | Path, *,
                     sha256: str | None = None, img_size: int = 256) -> VQGAN:
    """:func:`import_checkpoint`, then save it as a supmim tokenizer folder in ``out_dir``."""
    model = import_checkpoint(src, fmt, sha256=sha256, img_size=img_size)
    model.save(out_dir)
    return model
