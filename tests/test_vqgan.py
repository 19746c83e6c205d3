"""VQGAN architectures and checkpoint import: every source format, checked against references.

The source state dicts are built here with the original repositories' exact key names and
shapes (open-muse/TiTok ``maskgit_vqgan.py``, MAGE and taming-transformers
``diffusionmodules/model.py`` + ``vqgan.py``, MaskGIT's Flax ``vqgan_tokenizer.py``), in small
channel configurations of the same architectures. Outputs are compared with references written
from the originals' semantics: a NumPy (NHWC, HWIO) forward of the Flax MaskGIT tokenizer, and a
functional PyTorch forward over taming-layout keys.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from supmim.errors import CheckpointError, ConfigError
from supmim.targets import (VQGAN, VQGANConfig, VQTarget, VQTokenizer, build_target,
                            import_checkpoint, import_tokenizer, load_tokenizer)
from supmim.targets.tokenizers.third_party import load_flax_msgpack, sha256_of
from supmim.targets.tokenizers.vqgan import Downsample
from supmim.targets.tokenizers.importers import map_state_dict

CH, MULT, NRB, Z, K = 32, (1, 1, 2), 2, 32, 24  # f4: 16x16 images -> 4x4 tokens


# ----------------------------------------------------------------------------- source layouts


def _res_shapes(sd: dict, p: str, cin: int, cout: int, *, bias: bool, maskgit: bool) -> None:
    sd[f"{p}.norm1.weight"] = sd[f"{p}.norm1.bias"] = (cin,)
    sd[f"{p}.conv1.weight"] = (cout, cin, 3, 3)
    sd[f"{p}.norm2.weight"] = sd[f"{p}.norm2.bias"] = (cout,)
    sd[f"{p}.conv2.weight"] = (cout, cout, 3, 3)
    if bias:
        sd[f"{p}.conv1.bias"] = sd[f"{p}.conv2.bias"] = (cout,)
    if cin != cout:  # MaskGIT's shortcut maps the block output (cout -> cout), taming's the input
        sd[f"{p}.nin_shortcut.weight"] = (cout, cout if maskgit else cin, 1, 1)
        if bias:
            sd[f"{p}.nin_shortcut.bias"] = (cout,)


def _attn_shapes(sd: dict, p: str, c: int) -> None:
    for n in ("norm", "q", "k", "v", "proj_out"):
        sd[f"{p}.{n}.weight"] = (c,) if n == "norm" else (c, c, 1, 1)
        sd[f"{p}.{n}.bias"] = (c,)


def source_shapes(layout: str, ch: int = CH, mult: tuple = MULT, nrb: int = NRB, z: int = Z,
                  k: int = K, attn_levels: tuple = ()) -> dict[str, tuple]:
    """Key -> shape of a state dict in ``layout``: "maskgit-bin" (open-muse / TiTok),
    "mage" (MAGE's taming-style MaskGIT) or "taming" (taming-transformers VQModel)."""
    sd: dict[str, tuple] = {}
    n_levels, taming = len(mult), layout == "taming"
    maskgit = not taming
    sd["encoder.conv_in.weight"] = (ch, 3, 3, 3)
    if taming:
        sd["encoder.conv_in.bias"] = (ch,)
    in_mult = (1,) + tuple(mult)
    for i in range(n_levels):
        bi, bo = ch * in_mult[i], ch * mult[i]
        for j in range(nrb):
            _res_shapes(sd, f"encoder.down.{i}.block.{j}", bi, bo, bias=taming, maskgit=maskgit)
            if i in attn_levels:
                _attn_shapes(sd, f"encoder.down.{i}.attn.{j}", bo)
            bi = bo
        if taming and i != n_levels - 1:
            sd[f"encoder.down.{i}.downsample.conv.weight"] = (bo, bo, 3, 3)
            sd[f"encoder.down.{i}.downsample.conv.bias"] = (bo,)
    last = ch * mult[-1]
    mids = [f"mid.{j}" for j in range(nrb)] if layout == "maskgit-bin" else ["mid.block_1",
                                                                             "mid.block_2"]
    for part in ("encoder", "decoder"):
        for m in mids:
            _res_shapes(sd, f"{part}.{m}", last, last, bias=taming, maskgit=maskgit)
        if taming:
            _attn_shapes(sd, f"{part}.mid.attn_1", last)
    sd["encoder.norm_out.weight"] = sd["encoder.norm_out.bias"] = (last,)
    sd["encoder.conv_out.weight"] = (z, last, 3, 3) if taming else (z, last, 1, 1)
    sd["encoder.conv_out.bias"] = (z,)
    if taming:
        sd["quant_conv.weight"] = sd["post_quant_conv.weight"] = (z, z, 1, 1)
        sd["quant_conv.bias"] = sd["post_quant_conv.bias"] = (z,)
    sd["quantize.embedding.weight"] = (k, z)
    sd["decoder.conv_in.weight"] = (last, z, 3, 3)
    sd["decoder.conv_in.bias"] = (last,)
    bi = last
    for i in reversed(range(n_levels)):
        bo = ch * mult[i]
        for j in range(nrb + 1 if taming else nrb):
            _res_shapes(sd, f"decoder.up.{i}.block.{j}", bi, bo, bias=taming, maskgit=maskgit)
            if i in attn_levels:
                _attn_shapes(sd, f"decoder.up.{i}.attn.{j}", bo)
            bi = bo
        if i != 0:
            name = "upsample_conv" if layout == "maskgit-bin" else "upsample.conv"
            sd[f"decoder.up.{i}.{name}.weight"] = (bo, bo, 3, 3)
            sd[f"decoder.up.{i}.{name}.bias"] = (bo,)
    sd["decoder.norm_out.weight"] = sd["decoder.norm_out.bias"] = (ch * mult[0],)
    sd["decoder.conv_out.weight"] = (3, ch * mult[0], 3, 3)
    sd["decoder.conv_out.bias"] = (3,)
    return sd


def random_state(shapes: Mapping[str, tuple], seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if "norm" in key.rsplit(".", 2)[-2] and key.endswith("weight"):
            out[key] = 1.0 + 0.2 * torch.randn(shape, generator=g)
        elif key.endswith("bias"):
            out[key] = 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
            out[key] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
    return out


def smooth_images(n: int, size: int = 16, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    a, b = torch.rand(n, 3, 1, 1, generator=g), torch.rand(n, 3, 1, 1, generator=g)
    return (0.5 * a + 0.5 * b * torch.sin(6 * xx + 3 * yy * a)).clamp(0, 1)


# ----------------------------------------------------------------------------- taming reference


def _gn(x: Tensor, sd: Mapping[str, Tensor], p: str) -> Tensor:
    return F.group_norm(x, 32, sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-6)


def _swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)  # taming's nonlinearity()


def _conv(x: Tensor, sd: Mapping[str, Tensor], p: str, pad: int = 1, stride: int = 1) -> Tensor:
    return F.conv2d(x, sd[f"{p}.weight"], sd.get(f"{p}.bias"), stride=stride, padding=pad)


def ref_res(x: Tensor, sd: Mapping[str, Tensor], p: str, maskgit: bool) -> Tensor:
    h = _conv(_swish(_gn(x, sd, f"{p}.norm1")), sd, f"{p}.conv1")
    h = _conv(_swish(_gn(h, sd, f"{p}.norm2")), sd, f"{p}.conv2")
    if f"{p}.nin_shortcut.weight" in sd:
        x = _conv(h if maskgit else x, sd, f"{p}.nin_shortcut", pad=0)
    return x + h


def ref_attn(x: Tensor, sd: Mapping[str, Tensor], p: str) -> Tensor:
    h_ = _gn(x, sd, f"{p}.norm")
    q, k, v = (_conv(h_, sd, f"{p}.{n}", pad=0) for n in "qkv")
    b, c, h, w = q.shape
    w_ = torch.bmm(q.reshape(b, c, h * w).permute(0, 2, 1), k.reshape(b, c, h * w)) * c ** -0.5
    w_ = torch.softmax(w_, dim=2)
    out = torch.bmm(v.reshape(b, c, h * w), w_.permute(0, 2, 1)).reshape(b, c, h, w)
    return x + _conv(out, sd, f"{p}.proj_out", pad=0)


def ref_taming_layout(sd: Mapping[str, Tensor], x: Tensor, *, maskgit: bool,
                      levels: int) -> tuple[Tensor, Tensor]:
    """(ids, reconstruction) of taming's Encoder/Decoder forward over taming-layout keys;
    ``maskgit`` = MAGE's variant (avg-pool down, shortcut on the output, no quant convs)."""
    def blocks(h: Tensor, part: str, i: int) -> Tensor:
        j = 0
        while f"{part}.{i}.block.{j}.conv1.weight" in sd:
            h = ref_res(h, sd, f"{part}.{i}.block.{j}", maskgit)
            if f"{part}.{i}.attn.{j}.q.weight" in sd:
                h = ref_attn(h, sd, f"{part}.{i}.attn.{j}")
            j += 1
        return h

    def mid(h: Tensor, part: str) -> Tensor:
        h = ref_res(h, sd, f"{part}.mid.block_1", maskgit)
        if f"{part}.mid.attn_1.q.weight" in sd:
            h = ref_attn(h, sd, f"{part}.mid.attn_1")
        return ref_res(h, sd, f"{part}.mid.block_2", maskgit)

    h = _conv(x, sd, "encoder.conv_in")
    for i in range(levels):
        h = blocks(h, "encoder.down", i)
        if i != levels - 1:
            if maskgit:
                h = F.avg_pool2d(h, 2, 2)
            else:
                h = _conv(F.pad(h, (0, 1, 0, 1)), sd, f"encoder.down.{i}.downsample.conv", pad=0,
                          stride=2)
    h = mid(h, "encoder")
    out_pad = 0 if maskgit else 1
    h = _conv(_swish(_gn(h, sd, "encoder.norm_out")), sd, "encoder.conv_out", pad=out_pad)
    if not maskgit:
        h = _conv(h, sd, "quant_conv", pad=0)
    e = sd["quantize.embedding.weight"]
    z = h.permute(0, 2, 3, 1).reshape(-1, e.shape[1])
    d = (z ** 2).sum(1, keepdim=True) + (e ** 2).sum(1) - 2 * z @ e.t()
    ids = d.argmin(1).reshape(h.shape[0], h.shape[2], h.shape[3])
    q = e[ids].permute(0, 3, 1, 2)
    if not maskgit:
        q = _conv(q, sd, "post_quant_conv", pad=0)
    h = mid(_conv(q, sd, "decoder.conv_in"), "decoder")
    for i in reversed(range(levels)):
        h = blocks(h, "decoder.up", i)
        if i != 0:
            h = _conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), sd,
                      f"decoder.up.{i}.upsample.conv")
    return ids, _conv(_swish(_gn(h, sd, "decoder.norm_out")), sd, "decoder.conv_out")


def with_data_codebook(sd: dict[str, Tensor], latents: Tensor, seed: int = 1) -> dict[str, Tensor]:
    """Codes drawn from real latents (so ids vary like a trained tokenizer's), plus noise."""
    flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    g = torch.Generator().manual_seed(seed)
    pick = flat[torch.randperm(flat.shape[0], generator=g)[:K]]
    sd = dict(sd)
    sd["quantize.embedding.weight"] = pick + 0.01 * torch.randn(pick.shape, generator=g)
    return sd


# ----------------------------------------------------------------------------- Flax reference


def flax_tree(seed: int = 0, ch: int = CH, mult: tuple = MULT, nrb: int = NRB, z: int = Z,
              k: int = K) -> dict:
    """Random params named as Flax names MaskGIT's VQVAE: modules are auto-named
    ``{Type}_{n}`` in creation order within each ``nn.compact`` ``__call__``."""
    rng = np.random.default_rng(seed)

    class Scope:
        def __init__(self) -> None:
            self.params: dict = {}
            self.counts: dict[str, int] = {}

        def name(self, kind: str) -> str:
            n = self.counts.get(kind, 0)
            self.counts[kind] = n + 1
            return f"{kind}_{n}"

        def conv(self, cin: int, cout: int, size: int, bias: bool = True) -> None:
            p = {"kernel": (rng.standard_normal((size, size, cin, cout)) /
                            math.sqrt(size * size * cin)).astype(np.float32)}
            if bias:
                p["bias"] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
            self.params[self.name("Conv")] = p

        def norm(self, c: int) -> None:
            self.params[self.name("GroupNorm")] = {
                "scale": (1 + 0.2 * rng.standard_normal(c)).astype(np.float32),
                "bias": (0.1 * rng.standard_normal(c)).astype(np.float32)}

        def res_block(self, cin: int, filters: int) -> None:
            inner = Scope()  # ResBlock.__call__ (nn.compact)
            inner.norm(cin)
            inner.conv(cin, filters, 3, bias=False)
            inner.norm(filters)
            inner.conv(filters, filters, 3, bias=False)
            if cin != filters:
                inner.conv(filters, filters, 1, bias=False)  # applied to the block's output
            self.params[self.name("ResBlock")] = inner.params

    enc = Scope()  # Encoder.__call__
    enc.conv(3, ch, 3, bias=False)
    cin = ch
    for i in range(len(mult)):
        for _ in range(nrb):
            enc.res_block(cin, ch * mult[i])
            cin = ch * mult[i]
    for _ in range(nrb):
        enc.res_block(cin, cin)
    enc.norm(cin)
    enc.conv(cin, z, 1)
    dec = Scope()  # Decoder.__call__
    cin = ch * mult[-1]
    dec.conv(z, cin, 3)
    for _ in range(nrb):
        dec.res_block(cin, cin)
    for i in reversed(range(len(mult))):
        for _ in range(nrb):
            dec.res_block(cin, ch * mult[i])
            cin = ch * mult[i]
        if i > 0:
            dec.conv(cin, cin, 3)
    dec.norm(cin)
    dec.conv(cin, 3, 3)
    codebook = (rng.standard_normal((k, z)) * 0.1).astype(np.float32)
    return {"params": {"encoder": enc.params, "decoder": dec.params,
                       "quantizer": {"codebook": codebook}}}


def np_conv(x: np.ndarray, p: Mapping[str, np.ndarray]) -> np.ndarray:
    """Flax nn.Conv, padding "SAME", stride 1: x (N, H, W, Cin), kernel (kh, kw, Cin, Cout)."""
    kern = p["kernel"]
    kh, kw = kern.shape[:2]
    xp = np.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))
    y = np.einsum("nhwcij,ijco->nhwo", win, kern)
    return y + p["bias"] if "bias" in p else y


def np_gn(x: np.ndarray, p: Mapping[str, np.ndarray], groups: int = 32) -> np.ndarray:
    """flax.linen.GroupNorm defaults: 32 groups, epsilon 1e-6."""
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = (g ** 2).mean(axis=(1, 2, 4), keepdims=True) - mean ** 2
    y = ((g - mean) / np.sqrt(var + 1e-6)).reshape(n, h, w, c)
    return y * p["scale"] + p["bias"]


def np_swish(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def np_res(x: np.ndarray, p: Mapping) -> np.ndarray:
    """maskgit ResBlock.__call__: the 1x1 shortcut reads ``x`` after it was overwritten."""
    input_dim = x.shape[-1]
    residual = x
    x = np_conv(np_swish(np_gn(x, p["GroupNorm_0"])), p["Conv_0"])
    x = np_conv(np_swish(np_gn(x, p["GroupNorm_1"])), p["Conv_1"])
    if input_dim != x.shape[-1]:
        residual = np_conv(x, p["Conv_2"])
    return x + residual


def np_maskgit(tree: Mapping, images01: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids (N, h, w), reconstruction (N, H, W, 3)) of MaskGIT's VQVAE, NHWC, from its Flax
    params: encode_to_indices then decode_from_indices."""
    enc, dec = tree["params"]["encoder"], tree["params"]["decoder"]
    levels = len(MULT)
    x = np_conv(images01, enc["Conv_0"])
    b = 0
    for i in range(levels):
        for _ in range(NRB):
            x = np_res(x, enc[f"ResBlock_{b}"])
            b += 1
        if i < levels - 1:  # layers.dsample: 2x2 average pooling
            n, h, w, c = x.shape
            x = x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    for _ in range(NRB):
        x = np_res(x, enc[f"ResBlock_{b}"])
        b += 1
    x = np_conv(np_swish(np_gn(x, enc["GroupNorm_0"])), enc["Conv_1"])
    codebook = tree["params"]["quantizer"]["codebook"]
    flat = x.reshape(-1, x.shape[-1])
    d = (flat ** 2).sum(1, keepdims=True) - 2 * flat @ codebook.T + (codebook ** 2).sum(1)
    ids = d.argmin(1).reshape(x.shape[:3])
    y = np_conv(codebook[ids], dec["Conv_0"])
    b, c = 0, 1
    for _ in range(NRB):
        y = np_res(y, dec[f"ResBlock_{b}"])
        b += 1
    for i in reversed(range(levels)):
        for _ in range(NRB):
            y = np_res(y, dec[f"ResBlock_{b}"])
            b += 1
        if i > 0:  # layers.upsample (nearest) then a conv
            y = np_conv(y.repeat(2, axis=1).repeat(2, axis=2), dec[f"Conv_{c}"])
            c += 1
    y = np_conv(np_swish(np_gn(y, dec["GroupNorm_0"])), dec[f"Conv_{c}"])
    return ids, y


def flax_to_bytes(tree: Mapping) -> bytes:
    """flax.serialization.to_bytes's encoding: ndarrays as msgpack ExtType(1, msgpack of
    (shape, dtype name, C-order bytes))."""
    msgpack = pytest.importorskip("msgpack")  # an optional dependency of supmim

    def pack(obj: object) -> msgpack.ExtType:
        if isinstance(obj, np.ndarray):
            payload = msgpack.packb((obj.shape, obj.dtype.name, obj.tobytes("C")),
                                    use_bin_type=True)
            return msgpack.ExtType(1, payload)
        raise TypeError(type(obj))
    return msgpack.packb(tree, default=pack, strict_types=True)


def maskgit_bin_from_flax(tree: Mapping) -> dict[str, Tensor]:
    """The same weights in the open-muse / TiTok PyTorch-port layout (a test-side port)."""
    enc, dec = tree["params"]["encoder"], tree["params"]["decoder"]
    sd: dict[str, Tensor] = {}

    def conv(dst: str, p: Mapping) -> None:
        sd[f"{dst}.weight"] = torch.from_numpy(p["kernel"].transpose(3, 2, 0, 1).copy())
        if "bias" in p:
            sd[f"{dst}.bias"] = torch.from_numpy(p["bias"].copy())

    def norm(dst: str, p: Mapping) -> None:
        sd[f"{dst}.weight"] = torch.from_numpy(p["scale"].copy())
        sd[f"{dst}.bias"] = torch.from_numpy(p["bias"].copy())

    def res(dst: str, p: Mapping) -> None:
        norm(f"{dst}.norm1", p["GroupNorm_0"])
        conv(f"{dst}.conv1", p["Conv_0"])
        norm(f"{dst}.norm2", p["GroupNorm_1"])
        conv(f"{dst}.conv2", p["Conv_1"])
        if "Conv_2" in p:
            conv(f"{dst}.nin_shortcut", p["Conv_2"])

    levels = len(MULT)
    conv("encoder.conv_in", enc["Conv_0"])
    b = 0
    for i in range(levels):
        for j in range(NRB):
            res(f"encoder.down.{i}.block.{j}", enc[f"ResBlock_{b}"])
            b += 1
    for j in range(NRB):
        res(f"encoder.mid.{j}", enc[f"ResBlock_{b}"])
        b += 1
    norm("encoder.norm_out", enc["GroupNorm_0"])
    conv("encoder.conv_out", enc["Conv_1"])
    conv("decoder.conv_in", dec["Conv_0"])
    b, c = 0, 1
    for j in range(NRB):
        res(f"decoder.mid.{j}", dec[f"ResBlock_{b}"])
        b += 1
    for i in reversed(range(levels)):
        for j in range(NRB):
            res(f"decoder.up.{i}.block.{j}", dec[f"ResBlock_{b}"])
            b += 1
        if i > 0:
            conv(f"decoder.up.{i}.upsample_conv", dec[f"Conv_{c}"])
            c += 1
    norm("decoder.norm_out", dec["GroupNorm_0"])
    conv("decoder.conv_out", dec[f"Conv_{c}"])
    sd["quantize.embedding.weight"] = torch.from_numpy(tree["params"]["quantizer"]["codebook"].copy())
    return sd


def mage_from_bin(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The same weights in MAGE's layout (mid.block_1/2, upsample.conv), under 'state_dict'."""
    out = {}
    for key, v in sd.items():
        key = key.replace(".mid.0.", ".mid.block_1.").replace(".mid.1.", ".mid.block_2.")
        out[key.replace("upsample_conv", "upsample.conv")] = v
    return out


@pytest.fixture(scope="module")
def flax_case() -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """A Flax tree whose codebook holds real latents, images, and the NumPy reference."""
    tree = flax_tree()
    images = smooth_images(4).permute(0, 2, 3, 1).numpy().astype(np.float64)
    # codes drawn from the encoder's outputs, so the ids vary (random codes give one id)
    model = import_flax(tree)
    latents = model.encode_latents(torch.from_numpy(images).permute(0, 3, 1, 2).float())
    flat = latents.permute(0, 2, 3, 1).reshape(-1, Z).numpy()
    rng = np.random.default_rng(3)
    tree["params"]["quantizer"]["codebook"] = (flat[rng.permutation(len(flat))[:K]]
                                               + 0.01 * rng.standard_normal((K, Z))).astype(np.float32)
    ids, recon = np_maskgit(tree, images)
    return tree, images, ids, recon


def import_flax(tree: Mapping) -> VQGAN:
    from supmim.targets.tokenizers.importers import build_from_state, convert_maskgit_flax
    state, _ = convert_maskgit_flax(tree)
    return build_from_state(state, "maskgit")


# ----------------------------------------------------------------------------- MaskGIT


def test_maskgit_flax_msgpack_matches_numpy_reference(tmp_path, flax_case) -> None:
    tree, images, ref_ids, ref_recon = flax_case
    path = tmp_path / "tokenizer_imagenet256_checkpoint"
    path.write_bytes(flax_to_bytes(tree))
    tok = import_tokenizer(path, "maskgit-flax", tmp_path / "tok")
    assert tok.config.ch_mult == list(MULT) and tok.config.num_res_blocks == NRB
    assert tok.factor == 4 and tok.codebook_size == K and tok.input_range == (0.0, 1.0)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    ids = tok.encode(x)
    assert ids.shape == (4, 4, 4)
    assert len(np.unique(ref_ids)) > 4  # the comparison is not between constant grids
    np.testing.assert_array_equal(ids.numpy(), ref_ids)
    recon = tok.decoder(tok.quantizer.lookup(ids))  # the raw decoder output, before clamping
    np.testing.assert_allclose(recon.permute(0, 2, 3, 1).numpy(), ref_recon, atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(tok.decode(ids), recon.clamp(0, 1))
    # the saved folder loads as any tokenizer and gives the same ids
    again = load_tokenizer(tmp_path / "tok")
    assert isinstance(again, VQGAN) and again.kind == "vqgan-maskgit"
    assert torch.equal(again.encode(x), ids)
    assert again.metadata["source_format"] == "maskgit-flax"
    assert again.metadata["source_sha256"] == sha256_of(path)


def test_flax_reader_handles_train_state_nesting_chunks_and_bf16(tmp_path, flax_case) -> None:
    msgpack = pytest.importorskip("msgpack")
    tree = flax_case[0]
    codebook = tree["params"]["quantizer"]["codebook"]
    chunked = {"__msgpack_chunked_array__": True, "shape": {"0": K, "1": Z},
               "chunks": {"0": codebook.ravel()[:100], "1": codebook.ravel()[100:]}}
    wrapped = {"step": np.array(7), "opt_state": {"mu": np.zeros(3, np.float32)},
               "params": {"params": {**tree["params"], "quantizer": {"codebook": chunked}}}}
    path = tmp_path / "ckpt"
    path.write_bytes(flax_to_bytes(wrapped))
    np.testing.assert_array_equal(load_flax_msgpack(path)["params"]["params"]["quantizer"]["codebook"],
                                  codebook)
    tok = import_checkpoint(path, "maskgit-flax")
    torch.testing.assert_close(tok.quantizer.weight, torch.from_numpy(codebook))
    assert tok.metadata["ignored_keys"] == 2  # step and opt_state/mu, reported not converted
    # bfloat16 leaves (the top 16 bits of float32) convert without ml_dtypes
    bits = (np.array([1.5, -2.25], np.float32).view(np.uint32) >> 16).astype(np.uint16)
    payload = msgpack.packb(((2,), "bfloat16", bits.tobytes()), use_bin_type=True)
    (tmp_path / "bf16").write_bytes(msgpack.packb({"a": msgpack.ExtType(1, payload)}))
    np.testing.assert_array_equal(load_flax_msgpack(tmp_path / "bf16")["a"], [1.5, -2.25])


def test_maskgit_bin_and_mage_ckpt_load_the_same_weights(tmp_path, flax_case) -> None:
    tree, images, ref_ids, _ = flax_case
    bin_sd = maskgit_bin_from_flax(tree)
    # the test-side port has exactly the open-muse / TiTok layout
    assert {k: tuple(v.shape) for k, v in bin_sd.items()} == source_shapes("maskgit-bin")
    torch.save(bin_sd, tmp_path / "maskgit-vqgan-imagenet-f16-256.bin")
    mage_sd = mage_from_bin(bin_sd)
    assert {k: tuple(v.shape) for k, v in mage_sd.items()} == source_shapes("mage")
    torch.save({"state_dict": mage_sd}, tmp_path / "vqgan_jax_strongaug.ckpt")
    from_bin = import_checkpoint(tmp_path / "maskgit-vqgan-imagenet-f16-256.bin", "maskgit-bin")
    from_mage = import_checkpoint(tmp_path / "vqgan_jax_strongaug.ckpt", "mage-ckpt")
    from_flax = import_flax(tree)
    for other in (from_mage, from_flax):
        assert other.state_dict().keys() == from_bin.state_dict().keys()
        for k, v in from_bin.state_dict().items():
            torch.testing.assert_close(other.state_dict()[k], v, msg=k)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    np.testing.assert_array_equal(from_bin.encode(x).numpy(), ref_ids)
    # and against a functional forward over MAGE's own key names
    ids, recon = ref_taming_layout(mage_sd, x, maskgit=True, levels=len(MULT))
    assert torch.equal(from_mage.encode(x), ids)
    torch.testing.assert_close(from_mage.decode(ids), recon.clamp(0, 1), atol=1e-4, rtol=1e-4)


def test_every_source_key_is_mapped_once_with_its_shape() -> None:
    for layout, fmt, kw in (("maskgit-bin", "maskgit-bin", {"nrb": 2}),
                            ("mage", "mage-ckpt", {"nrb": 2}),
                            ("taming", "taming-ckpt", {"attn_levels": (2,)})):
        src = random_state(source_shapes(layout, **kw))
        mapped, dropped = map_state_dict(src, fmt)
        assert len(mapped) == len(src) and not dropped  # injective, nothing dropped
        from supmim.targets.tokenizers.importers import build_from_state
        model = build_from_state(mapped, "taming" if layout == "taming" else "maskgit")
        assert set(model.state_dict()) == set(mapped)
        values = {id(v) for v in src.values()}
        assert {id(v) for v in mapped.values()} == values  # every source tensor is used


# ----------------------------------------------------------------------------- taming


def test_taming_lightning_ckpt_matches_reference_forward(tmp_path) -> None:
    shapes = source_shapes("taming", attn_levels=(2,))
    sd = random_state(shapes)
    x = smooth_images(3, seed=5)
    # codes from real latents of the [-1, 1] input (taming/data/base.py: x / 127.5 - 1)
    probe = with_data_codebook(sd, torch.zeros(1, Z, 1, 1))
    from supmim.targets.tokenizers.importers import build_from_state
    tmp_model = build_from_state(map_state_dict(probe, "taming-ckpt")[0], "taming")
    sd = with_data_codebook(sd, tmp_model.encode_latents(x))
    ckpt = {"epoch": 3, "global_step": 1000, "pytorch-lightning_version": "1.0.8",
            "state_dict": {**sd, "loss.discriminator.main.0.weight": torch.zeros(8, 3, 4, 4),
                           "loss.perceptual_loss.net.slice1.0.weight": torch.zeros(4, 3, 3, 3)},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 4.5e-6}]}],
            "callbacks": {"ModelCheckpoint": LightningLikeCallback()}}
    torch.save(ckpt, tmp_path / "last.ckpt")
    tok = import_tokenizer(tmp_path / "last.ckpt", "taming-ckpt", tmp_path / "tok")
    assert tok.kind == "vqgan-taming" and tok.input_range == (-1.0, 1.0)
    assert tok.config.attn_levels == [2] and tok.config.mid_attn
    assert tok.metadata["ignored_key_prefixes"] == ["loss"] and tok.metadata["ignored_keys"] == 2
    assert any(g.endswith("._side_effect") for g in tok.metadata["ignored_pickle_globals"])
    assert not MARKER  # the callback's reduce function never ran
    ids, recon = ref_taming_layout(sd, x * 2 - 1, maskgit=False, levels=len(MULT))
    assert len(ids.unique()) > 4
    assert torch.equal(tok.encode(x), ids)
    torch.testing.assert_close(tok.decode(ids), ((recon + 1) / 2).clamp(0, 1), atol=1e-4,
                               rtol=1e-4)
    assert torch.equal(load_tokenizer(tmp_path / "tok").encode(x), ids)


def test_full_size_architectures_have_the_published_shapes() -> None:
    with torch.device("meta"):  # shapes only, no memory
        taming = VQGAN(VQGANConfig.taming_f16_1024())
        maskgit = VQGAN(VQGANConfig())
    # valeoai/Maskgit-pytorch README: "72.142M for VQGAN" (taming's ImageNet f16-1024)
    assert sum(p.numel() for p in taming.parameters()) == 72_141_699
    src = source_shapes("taming", ch=128, mult=(1, 1, 2, 2, 4), nrb=2, z=256, k=1024,
                        attn_levels=(4,))
    assert sum(math.prod(s) for s in src.values()) == 72_141_699
    src = source_shapes("maskgit-bin", ch=128, mult=(1, 1, 2, 2, 4), nrb=2, z=256, k=1024)
    assert sum(math.prod(s) for s in src.values()) == sum(p.numel() for p in maskgit.parameters())
    assert maskgit.factor == 16 and maskgit.codebook_size == 1024


def test_taming_config_and_downsampling_equivalences() -> None:
    cfg = VQGANConfig.taming_f16_1024()
    assert cfg.factor == 16 and cfg.attn_levels == [4]  # 16x16 attention of a 256 input
    with pytest.raises(ConfigError, match="no attention"):
        VQGANConfig(attn_levels=[1]).validate()
    with pytest.raises(ConfigError, match="norm_groups"):
        VQGANConfig(ch=48).validate()
    # TF "SAME" 2x2 average pooling on an odd size: the last window averages real pixels only
    x = torch.arange(35.0).reshape(1, 1, 5, 7)
    y = Downsample(1, "maskgit")(x)
    assert y.shape == (1, 1, 3, 4)
    assert y[0, 0, 2, 3] == x[0, 0, 4, 6]  # a 1x1 window at the corner
    assert y[0, 0, 0, 3] == x[0, 0, 0:2, 6].mean()
    assert y[0, 0, 1, 1] == x[0, 0, 2:4, 2:4].mean()
    # GroupNorm epsilon 1e-6 (Flax default, taming's Normalize) shows on low-variance inputs
    norm = VQGAN(VQGANConfig(ch=32, ch_mult=[1], num_res_blocks=1, mid_blocks=1, z_channels=32,
                             embed_dim=32, codebook_size=4)).encoder.norm_out
    small = 1e-3 * torch.randn(2, 32, 4, 4, generator=torch.Generator().manual_seed(0))
    ref = np_gn(small.permute(0, 2, 3, 1).double().numpy(),
                {"scale": np.ones(32), "bias": np.zeros(32)})
    np.testing.assert_allclose(norm(small).permute(0, 2, 3, 1).detach().numpy(), ref, rtol=1e-3,
                               atol=1e-4)


def test_vqgan_code_distances_match_a_direct_computation() -> None:
    torch.manual_seed(0)
    tok = VQGAN(VQGANConfig(ch=32, ch_mult=[1, 1], num_res_blocks=1, mid_blocks=1,
                            z_channels=8, embed_dim=8, codebook_size=6))
    x = torch.rand(2, 3, 16, 16)
    d = tok.code_distances(x)
    z = tok.encode_latents(x).permute(0, 2, 3, 1)  # (B, h, w, D)
    ref = ((z[..., None, :] - tok.quantizer.weight) ** 2).sum(-1)
    assert d.shape == (2, 8, 8, 6)
    torch.testing.assert_close(d, ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(d.argmin(-1), tok.encode(x))


# ----------------------------------------------------------------------------- safety


MARKER: list[str] = []


def _side_effect(path: str) -> None:
    MARKER.append(path)
    with open(path, "w") as f:
        f.write("pwned")


class LightningLikeCallback:
    """A non-tensor object like those Lightning pickles; loading must never rebuild it."""

    def __reduce__(self):
        return (_side_effect, ("/nonexistent-dir/never",))


class Malicious:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.path}",))


def test_lightning_objects_and_malicious_pickles_never_run(tmp_path) -> None:
    marker = tmp_path / "owned"
    sd = random_state(source_shapes("taming"))
    torch.save({"state_dict": sd, "hyper_parameters": Malicious(str(marker)),
                "callbacks": [LightningLikeCallback()]}, tmp_path / "evil.ckpt")
    with pytest.raises(Exception):  # the reason this path exists: weights_only refuses it
        torch.load(tmp_path / "evil.ckpt", weights_only=True)
    tok = import_checkpoint(tmp_path / "evil.ckpt", "taming-ckpt")
    assert not marker.exists() and not MARKER
    assert any(g.endswith("system") for g in tok.metadata["ignored_pickle_globals"])
    torch.testing.assert_close(tok.quantizer.weight, sd["quantize.embedding.weight"])
    # a file that is nothing but a payload: refused, still nothing runs
    torch.save(Malicious(str(marker)), tmp_path / "payload.ckpt")
    with pytest.raises(CheckpointError, match="not a state dict"):
        import_checkpoint(tmp_path / "payload.ckpt", "taming-ckpt")
    # the legacy (non-zip) format is only read by weights_only: refused, with the way out
    torch.save({"state_dict": sd, "x": Malicious(str(marker))}, tmp_path / "legacy.ckpt",
               _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy.*weights_only=False"):
        import_checkpoint(tmp_path / "legacy.ckpt", "taming-ckpt")
    assert not marker.exists()


def test_sha256_is_checked_and_a_mismatch_refused(tmp_path) -> None:
    torch.save(random_state(source_shapes("maskgit-bin")), tmp_path / "t.bin")
    good = sha256_of(tmp_path / "t.bin")
    with pytest.raises(CheckpointError, match="sha256 mismatch.*expected 0{64}, got " + good):
        import_checkpoint(tmp_path / "t.bin", "maskgit-bin", sha256="0" * 64)
    with pytest.raises(CheckpointError, match="64 hex digits"):
        import_checkpoint(tmp_path / "t.bin", "maskgit-bin", sha256="abc")
    tok = import_checkpoint(tmp_path / "t.bin", "maskgit-bin", sha256=good.upper())
    assert tok.metadata["sha256_verified"] and tok.metadata["source_sha256"] == good


def test_wrong_format_or_incomplete_checkpoint_is_refused(tmp_path) -> None:
    torch.save(random_state(source_shapes("taming")), tmp_path / "taming.ckpt")
    with pytest.raises(CheckpointError, match="no place in a maskgit-bin VQGAN.*--format"):
        import_checkpoint(tmp_path / "taming.ckpt", "maskgit-bin")
    sd = random_state(source_shapes("maskgit-bin"))
    del sd["decoder.conv_out.bias"]
    torch.save(sd, tmp_path / "cut.bin")
    with pytest.raises(CheckpointError, match="missing: decoder.conv_out.bias"):
        import_checkpoint(tmp_path / "cut.bin", "maskgit-bin")
    with pytest.raises(ConfigError, match="maskgit-flax"):
        import_checkpoint(tmp_path / "cut.bin", "dalle")
    (tmp_path / "junk").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError):
        import_checkpoint(tmp_path / "junk", "maskgit-flax")


def test_import_messages_count_and_point_at_the_format(tmp_path) -> None:
    sd = random_state(source_shapes("maskgit-bin"))
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "one.bin")
    with pytest.raises(CheckpointError, match=r"^1 key of this checkpoint has no place .*"
                                              r"Is --format right\?"):
        import_checkpoint(tmp_path / "one.bin", "maskgit-bin")
    # every key in place but one of the wrong shape: the format may still be the mistake
    sd = random_state(source_shapes("maskgit-bin"))
    sd["decoder.conv_out.bias"] = torch.zeros(7)
    torch.save(sd, tmp_path / "shape.bin")
    with pytest.raises(CheckpointError, match=r"wrong shape: decoder.conv_out.bias\. "
                                              r"Is --format right\? \(formats: maskgit-bin"):
        import_checkpoint(tmp_path / "shape.bin", "maskgit-bin")


def test_an_img_size_that_could_never_load_is_refused_before_writing(tmp_path) -> None:
    from supmim.cli import main

    torch.save(random_state(source_shapes("maskgit-bin")), tmp_path / "t.bin")
    for size in (0, -3):
        with pytest.raises(ConfigError, match=f"--img-size {size}: give the resolution"):
            import_tokenizer(tmp_path / "t.bin", "maskgit-bin", tmp_path / "tok", img_size=size)
        assert main(["tokenizer", "import", str(tmp_path / "t.bin"), "--format", "maskgit-bin",
                     "--out", str(tmp_path / "tok"), "--img-size", str(size)]) == 2
        assert not (tmp_path / "tok").exists()
    import_tokenizer(tmp_path / "t.bin", "maskgit-bin", tmp_path / "tok", img_size=64)
    assert load_tokenizer(tmp_path / "tok").config.img_size == 64


@pytest.mark.parametrize("wrapped", [True, False])
def test_the_legacy_conversion_hint_works_as_printed(tmp_path, monkeypatch, wrapped) -> None:
    """The command the error prints converts both a Lightning-style ``{'state_dict': ...}``
    and a plain state dict (which has no 'state_dict' key to index)."""
    import argparse
    import re

    sd = random_state(source_shapes("taming"))
    extra = argparse.Namespace(lr=1.0)  # a pickled object that weights_only refuses
    obj = {"state_dict": sd, "hparams": extra} if wrapped else {**sd, "hparams": extra}
    torch.save(obj, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError) as err:
        import_checkpoint(tmp_path / "legacy.ckpt", "taming-ckpt")
    code = re.search(r'python -c "(.*?)"`', str(err.value)).group(1)
    monkeypatch.chdir(tmp_path)
    exec(code, {})  # what the user runs, in an environment they trust
    tok = import_checkpoint(tmp_path / "state_dict.pt", "taming-ckpt")
    torch.testing.assert_close(tok.quantizer.weight, sd["quantize.embedding.weight"])


# ----------------------------------------------------------------------------- as a MIM target


def test_imported_vqgan_is_a_vq_target(tmp_path) -> None:
    torch.save(random_state(source_shapes("maskgit-bin")), tmp_path / "t.bin")
    import_tokenizer(tmp_path / "t.bin", "maskgit-bin", tmp_path / "tok")
    t = build_target("vq", img_size=32, patch_size=8, in_chans=3, tokenizer=tmp_path / "tok")
    assert isinstance(t, VQTarget) and t.tokenizer_size == (16, 16) and t.out_dim == K
    assert t.tokenizer.weights_sha256 == sha256_of(tmp_path / "tok" / "tokenizer.safetensors")
    x = smooth_images(2, size=32)
    ids = t(x)
    assert ids.shape == (2, 16) and ids.dtype == torch.int64 and not ids.is_inference()
    small = F.interpolate(x, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    assert torch.equal(ids, t.tokenizer.encode(small.clamp(0, 1)).flatten(1))
    assert t.decode(ids).shape == (2, 3, 32, 32)
    bf16 = VQTarget(t.tokenizer, img_size=32, patch_size=8, precision="bf16")(x)
    assert bf16.dtype == torch.int64 and (bf16 == ids).float().mean() > 0.5
    with pytest.raises(ConfigError, match="precision"):
        VQTarget(t.tokenizer, img_size=32, patch_size=8, precision="fp8")
    # the kind decides the class; a VQGAN folder is not a small VQ tokenizer
    with pytest.raises(CheckpointError, match="vqgan-maskgit.*load_tokenizer"):
        VQTokenizer.load(tmp_path / "tok")


def test_saved_tokenizer_weights_are_checksummed(tmp_path) -> None:
    torch.save(random_state(source_shapes("maskgit-bin")), tmp_path / "t.bin")
    tok = import_tokenizer(tmp_path / "t.bin", "maskgit-bin", tmp_path / "tok")
    other = VQGAN(tok.config)
    with torch.no_grad():
        other.quantizer.weight.add_(1.0)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in other.state_dict().items()},
              str(tmp_path / "tok" / "tokenizer.safetensors"))
    with pytest.raises(CheckpointError, match="do not match the sha256"):
        load_tokenizer(tmp_path / "tok")
