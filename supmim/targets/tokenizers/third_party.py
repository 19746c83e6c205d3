"""Read third-party tokenizer checkpoints without running any of their code.

Three containers reach supmim:

- PyTorch files (``torch.save``: the MaskGIT-port ``.bin`` state dicts, MAGE's ``.ckpt``,
  taming-transformers' Lightning ``.ckpt``) or ``.safetensors``. They are read with
  ``torch.load(weights_only=True)``. Lightning checkpoints also pickle callbacks and
  hyper-parameters (``omegaconf`` or Lightning classes) that ``weights_only`` refuses; those
  are read by :class:`_InertUnpickler`, which rebuilds tensors itself and turns every other
  global into an inert placeholder that is never imported and never called.
- Flax msgpack files (MaskGIT's own ``tokenizer_imagenet256_checkpoint``), parsed with the
  ``msgpack`` package alone: no JAX, no Flax.

Every reader can check the file's sha256 first and refuses a mismatch.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from supmim.errors import CheckpointError

# ----------------------------------------------------------------------------- checksums


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_sha256(path: str | Path, expected: str | None) -> str:
    """The file's sha256; CheckpointError when ``expected`` is given and differs."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint '{p}' does not exist: check the path")
    actual = sha256_of(p)
    if expected is not None:
        want = expected.strip().lower()
        if len(want) != 64 or any(c not in "0123456789abcdef" for c in want):
            raise CheckpointError(f"--sha256 must be 64 hex digits, got {expected!r}")
        if actual != want:
            raise CheckpointError(
                f"sha256 mismatch for '{p}': expected {want}, got {actual}. The file is "
                f"damaged, truncated or not the checkpoint you meant: download it again from "
                f"its source (see docs/tokenizers.md) and compare the checksum it publishes")
    return actual


# ----------------------------------------------------------------------------- PyTorch files


class _Inert:
    """Stands in for any pickled global outside the tensor allowlist.

    Each ignored global becomes its own subclass (see :func:`_placeholder`), so pickle can
    call it (REDUCE), instantiate it (NEWOBJ), build it (BUILD) and add items to it
    (SETITEMS, APPENDS): all accepted, all discarded. The real class or function named in the
    pickle is never looked up, so none of its code runs.
    """

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return self

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<ignored {self.global_name}>"


def _placeholder(name: str) -> type[_Inert]:
    """A fresh inert class standing for the pickled global ``name``."""
    return type("IgnoredGlobal", (_Inert,), {"global_name": name, "__module__": __name__})


class _StorageType:
    """What ``torch.FloatStorage`` etc. unpickle to: only its dtype matters."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}


def _rebuild_tensor(storage: Tensor, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                    *_: Any) -> Tensor:
    """``torch._utils._rebuild_tensor_v2``'s job on a flat 1-D ``storage`` tensor."""
    if not isinstance(storage, Tensor):
        return _Inert()  # type: ignore[return-value]
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset)).clone()


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data  # a Parameter's data is all a state dict needs


def _rebuild_from_type(func: Any, new_type: Any, args: tuple, state: Any) -> Any:
    # Newer torch pickles Parameters as _rebuild_from_type_v2(_rebuild_tensor_v2, Parameter, ...)
    return func(*args) if func in _SAFE_FUNCS else _Inert()


_SAFE_FUNCS = (_rebuild_tensor, _rebuild_parameter)
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch", "Size"): torch.Size,
}


class _InertUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` of a zip-format ``torch.save`` file, safely.

    Tensors are rebuilt from the archive's raw storages by our own functions; OrderedDict,
    torch.Size and torch dtypes are the only other globals resolved. Everything else (a
    Lightning callback, an omegaconf config, or ``os.system`` in a hostile file) becomes an
    :class:`_Inert` placeholder, so no code named by the file ever runs.
    """

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix
        self.ignored: set[str] = set()
        self._storages: dict[str, Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)  # a dtype object: data, not code
        self.ignored.add(f"{module}.{name}")
        return _placeholder(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        # ('storage', storage type, key, location, numel): raw bytes at <prefix>/data/<key>
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        kind, key = pid[1], str(pid[2])
        dtype = kind.dtype if isinstance(kind, _StorageType) else torch.uint8
        if key not in self._storages:
            try:
                raw = self.archive.read(f"{self.prefix}data/{key}")
            except KeyError as e:
                raise pickle.UnpicklingError(f"storage {key} missing from the archive") from e
            self._storages[key] = torch.frombuffer(bytearray(raw), dtype=dtype) if raw \
                else torch.empty(0, dtype=dtype)
        return self._storages[key]


def _inert_load(path: Path) -> tuple[Any, set[str]]:
    """(object, names of the ignored globals) from a zip-format ``torch.save`` file."""
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise CheckpointError(f"'{path}' is a zip file but not a torch.save checkpoint "
                                  f"(expected one data.pkl, found {len(pkl)})")
        prefix = pkl[0][: -len("data.pkl")]
        unpickler = _InertUnpickler(archive.read(pkl[0]), archive, prefix)
        return unpickler.load(), unpickler.ignored


def load_torch_file(path: str | Path) -> tuple[Any, list[str]]:
    """The object in a ``torch.save`` file or the tensors of a ``.safetensors`` file, on the
    CPU, and the globals that had to be ignored (empty unless the file pickles non-tensor
    objects). Never unpickles arbitrary objects: ``weights_only=True`` first, then
    :class:`_InertUnpickler` for zip-format files that ``weights_only`` refuses."""
    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(p)), []
        except Exception as e:  # safetensors raises several types for damaged files
            raise CheckpointError(f"unreadable safetensors file '{p}': {e}") from e
    try:
        return torch.load(p, map_location="cpu", weights_only=True), []
    except Exception as first:  # noqa: BLE001 - any failure: explain, or try the safe reader
        if not zipfile.is_zipfile(p):
            raise CheckpointError(
                f"'{p}' cannot be read with torch.load(weights_only=True) ({first}). It is not "
                f"a zip-format torch.save file: either it is damaged or not a checkpoint, or "
                f"it uses the legacy (pre-1.6) format with pickled objects, which supmim will "
                f"not unpickle for safety. Convert a legacy file once, in an environment you "
                f"trust: `python -c \"import torch; o = torch.load('{p.name}', "
                f"map_location='cpu', weights_only=False); "
                f"torch.save(o.get('state_dict', o), 'state_dict.pt')\"` (a plain state dict "
                f"is saved as it is), and import that file") from first
        try:
            obj, ignored = _inert_load(p)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"unreadable checkpoint '{p}': {e}; the file is damaged or "
                                  f"not a torch.save checkpoint") from e
        return obj, sorted(ignored)


def find_state_dict(obj: Any, path: str | Path) -> dict[str, Tensor]:
    """The tensors of a plain state dict, or of ``obj['state_dict']`` (Lightning, MAGE).

    Non-tensor entries are dropped (Lightning keeps none in ``state_dict``)."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    elif isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"'{path}' holds a {type(obj).__name__}, not a state dict: "
                              f"expected a mapping of names to tensors (or one under "
                              f"'state_dict')")
    state = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise CheckpointError(f"'{path}' holds no tensors: is it a model checkpoint?")
    return state


# ----------------------------------------------------------------------------- Flax msgpack

# flax.serialization: ndarrays are msgpack ExtType(1, msgpack((shape, dtype name, bytes))),
# numpy scalars ExtType(3, same payload), complex numbers ExtType(2, msgpack((re, im))).
# Arrays over 2**30 bytes are split into {"__msgpack_chunked_array__": True, "shape": {"0": ..},
# "chunks": {"0": flat chunk, ..}}. Lists and tuples are stored as {"0": .., "1": ..} dicts.
_EXT_NDARRAY, _EXT_COMPLEX, _EXT_NPSCALAR = 1, 2, 3
_CHUNKED = "__msgpack_chunked_array__"


def _dtype(name: bytes | str) -> np.dtype | str:
    name = name.decode() if isinstance(name, bytes) else name
    return "bfloat16" if name == "bfloat16" else np.dtype(name)


def _array_from_payload(data: bytes) -> np.ndarray:
    import msgpack
    shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
    dtype = _dtype(dtype_name)
    if dtype == "bfloat16":  # no ml_dtypes needed: bf16 is the top half of a float32
        bits = np.frombuffer(buffer, dtype=np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape).copy()


def _ext_hook(code: int, data: bytes) -> Any:
    import msgpack
    if code == _EXT_NDARRAY:
        return _array_from_payload(data)
    if code == _EXT_NPSCALAR:
        return _array_from_payload(data)[()]
    if code == _EXT_COMPLEX:
        re, im = msgpack.unpackb(data)
        return complex(re, im)
    return msgpack.ExtType(code, data)


def _unchunk(tree: Any) -> Any:
    if isinstance(tree, dict):
        if tree.get(_CHUNKED) is True:
            shape = tuple(int(tree["shape"][str(i)]) for i in range(len(tree["shape"])))
            chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
            return np.concatenate([np.asarray(c).ravel() for c in chunks]).reshape(shape)
        return {k: _unchunk(v) for k, v in tree.items()}
    return tree


def load_flax_msgpack(path: str | Path) -> dict[str, Any]:
    """The nested dict of numpy arrays in a ``flax.serialization.to_bytes`` file."""
    try:
        import msgpack
    except ImportError as e:
        raise CheckpointError("reading a Flax msgpack checkpoint needs the `msgpack` package: "
                              "pip install 'msgpack>=1.0' (JAX and Flax are not needed)") from e
    p = Path(path)
    try:
        tree = msgpack.unpackb(p.read_bytes(), ext_hook=_ext_hook, raw=False,
                               strict_map_key=False)
    except (msgpack.UnpackException, ValueError, TypeError) as e:
        raise CheckpointError(f"'{p}' is not a Flax msgpack checkpoint ({e}): pass the file "
                              f"MaskGIT's README links (tokenizer_imagenet256_checkpoint)") from e
    if not isinstance(tree, dict):
        raise CheckpointError(f"'{p}' holds a msgpack {type(tree).__name__}, not a Flax "
                              f"variable tree")
    return _unchunk(tree)


def flatten_tree(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """{"a": {"b": arr}} -> {"a/b": arr}, keeping only array leaves."""
    flat: dict[str, np.ndarray] = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            flat.update(flatten_tree(v, key))
        elif isinstance(v, np.ndarray):
            flat[key] = v
    return flat
