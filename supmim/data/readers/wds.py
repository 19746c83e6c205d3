"""Standard WebDataset shards written by anything (``webdataset.ShardWriter``, img2dataset,
plain ``tar``): members ``KEY.jpg|jpeg|png|webp`` (``data.image_column`` picks another
extension) with ``KEY.cls`` (an integer) or ``KEY.json`` holding a ``label``, ``cls``,
``class``, ``labels`` or ``target`` field (``data.label_column`` names another field or
member extension). Labels are class numbers or class names (sorted names become classes).

``--data`` forms:

* a folder of ``train-*.tar`` shards with ``val-*.tar`` or ``test-*.tar`` beside them (the
  evaluation split; ``val`` wins when both exist);
* a brace pattern or ``::``-joined list, as webdataset expands them
  (``/d/train-{000000..000003}.tar``);
* ``pipe:COMMAND`` and ``http(s)://`` URLs (and patterns of them).

``data.test_data`` gives the evaluation split in the same forms (it replaces a folder's
``val-``/``test-`` shards).

Local uncompressed shards are *indexed*: their tar headers are scanned once (the index is
cached under ``data.cache_dir``, keyed by the shards' paths, sizes and modification times)
and samples are read by random access, exactly like ``supmim data pack``'s shards: the
trainer's data order, mid-epoch resume, per-process sharding and bad-file substitution all
hold. URLs, compressed shards and ``data.streaming=true`` go through the streaming path
(:mod:`supmim.data.streaming`), whose resume and epoch semantics are described there.

Members are parsed by supmim, never by webdataset's decoders, so nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from supmim.data.readers.registry import ALL_OPTIONS, ReadContext, need_package, register_reader
from supmim.data.readers.shards import INDEX, ShardDataset
from supmim.data.source import DataSource, cache_root, split_source
from supmim.data.streaming import OnBad, RawSample, SampleStream, StreamingImages, classes_of, survey
from supmim.errors import DataError

__all__ = ["IMAGE_MEMBERS", "LABEL_FIELDS", "WdsStream", "expand_shards", "is_wds_folder",
           "label_value", "scan_shard"]

IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")
LABEL_FIELDS = ("label", "cls", "class", "labels", "target")
_SPLIT = re.compile(r"^(train|val|validation|test)[-_.].*\.(tar|tar\.gz|tgz)$")
_SCHEMES = ("pipe:", "http://", "https://")
_BRACES = re.compile(r"\{[^{}]*(\.\.|,)[^{}]*\}")
def _need_webdataset() -> Any:
    return need_package("webdataset", "reading WebDataset shards")


# ------------------------------------------------------------------ members


def _text_label(text: str) -> int | str:
    text = text.strip()
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def label_value(members: dict[str, bytes], field: str | None) -> int | str:
    """The raw label of a sample given its members ``{extension: bytes}``: the ``field``
    member or JSON field when given, else ``cls``, else the JSON's first :data:`LABEL_FIELDS`."""
    if field is not None and field in members and field != "json":
        return _text_label(members[field].decode("utf-8"))
    if field is None and "cls" in members:
        return _text_label(members["cls"].decode("utf-8"))
    if "json" in members:
        meta = json.loads(members["json"])
        if isinstance(meta, dict):
            for name in ([field] if field else LABEL_FIELDS):
                value = meta.get(name)
                if isinstance(value, bool):
                    break
                if isinstance(value, int):
                    return value
                if isinstance(value, str):
                    return _text_label(value)
    wanted = f"a {field!r} member or JSON field" if field else "a .cls member or a .json label"
    raise DataError(f"no label: the sample has {sorted(members)}, not {wanted} "
                    "(set data.label_column)")


def image_member(members: dict[str, Any], ext: str | None) -> str:
    """The extension of the sample's image member."""
    for name in ([ext] if ext else IMAGE_MEMBERS):
        if name in members:
            return name
    wanted = ext or "|".join(IMAGE_MEMBERS)
    raise DataError(f"no image: the sample has {sorted(members)}, no .{wanted} member "
                    "(set data.image_column)")


def _key_ext(name: str) -> tuple[str, str] | None:
    """(key, lower-case extension) of a member name, as webdataset groups them."""
    from webdataset.tariterators import base_plus_ext
    key, ext = base_plus_ext(name)
    return (key, ext.lower()) if key is not None else None


# ------------------------------------------------------------------ indexed


def scan_shard(path: Path, image_ext: str | None, label_field: str | None
               ) -> tuple[list[list[int]], list[Any], list[str]]:
    """One pass over ``path``'s tar headers: ``(rows [[offset, size]], raw labels,
    problems)``; samples without a label or image, and a cut-off tail, are problems."""
    groups: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    small = {"cls", "json", label_field}
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                parts = _key_ext(m.name) if m.isfile() else None
                if parts is None:
                    continue
                key, ext = parts
                group = groups.setdefault(key, {})
                if ext in small and m.size < 1 << 20:
                    try:
                        group[ext] = tar.extractfile(m).read()  # type: ignore[union-attr]
                    except (OSError, tarfile.TarError, EOFError) as e:
                        problems.append(f"{path}#{key}: {ext} member unreadable ({e})")
                else:
                    group[ext] = (m.offset_data, m.size)
    except (OSError, tarfile.TarError, EOFError) as e:
        problems.append(f"{path}: tar stops early ({e})")
    rows, labels = [], []
    for key, members in groups.items():
        try:
            ext = image_member(members, image_ext)
            label = label_value(members, label_field)
        except (DataError, ValueError, UnicodeDecodeError) as e:
            problems.append(f"{path}#{key}: {e}")
            continue
        rows.append(list(members[ext]))
        labels.append(label)
    return rows, labels, problems


def _index(shards: list[Path], ctx: ReadContext) -> dict[str, Any]:
    """``{"rows": [[shard, offset, size]], "labels": [...], "problems": n}``, cached."""
    o = ctx.options
    stamp = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in shards]
    key = hashlib.sha1(json.dumps([stamp, o.image_column, o.label_column]).encode()).hexdigest()
    path = cache_root(ctx.cache_dir) / "wds-index" / f"{key[:24]}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass  # rebuilt below
    rows, labels, problems = [], [], []
    for n, shard in enumerate(shards):
        r, lab, prob = scan_shard(shard, o.image_column, o.label_column)
        rows += [[n, *row] for row in r]
        labels += lab
        problems += prob
    if problems:
        print(f"supmim: warning: {len(problems)} problem(s) indexing {len(shards)} shard(s), "
              f"e.g. {problems[0]}; those samples are left out", file=sys.stderr)
    index = {"rows": rows, "labels": labels, "problems": len(problems)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index))
    tmp.replace(path)
    return index


def _indexed(shards: list[Path], index: dict[str, Any], classes: list[str],
             names: dict[str, int] | None) -> ShardDataset:
    """A random-access split over ``shards`` from its ``index``."""
    labels = [names[v] if names is not None else v for v in index["labels"]]
    rows = [[*row, lab] for row, lab in zip(index["rows"], labels)]
    return ShardDataset(Path("/"), {"shards": [str(p) for p in shards], "index": rows}, classes)


# ------------------------------------------------------------------ streaming


class WdsStream(SampleStream):
    """WebDataset shards read front to back through webdataset's tar pipeline."""

    def __init__(self, urls: list[str], image_ext: str | None, label_field: str | None) -> None:
        self.units, self.image_ext, self.label_field = urls, image_ext, label_field
        self.name = urls[0] if len(urls) == 1 else f"{urls[0]} (+{len(urls) - 1} shards)"
        stamps = [[u, *_stamp(u)] for u in urls]
        self.identity = json.dumps(["wds", stamps, image_ext, label_field])

    def read(self, units: Sequence[int], on_bad: OnBad) -> Iterator[RawSample]:
        if not units:
            return
        wds = _need_webdataset()
        urls = [self.units[i] for i in units]

        def handler(exn: Exception) -> bool:  # tar-level errors (a cut-off shard): by URL
            named = [a for a in exn.args if isinstance(a, str) and a in urls]
            on_bad(named[0] if named else f"{self.name} (a shard)", exn)
            return True
        pipeline = wds.DataPipeline(wds.SimpleShardList(urls),
                                    wds.tarfile_to_samples(handler=handler))
        for sample in pipeline:
            where = f"{sample.get('__url__')}#{sample.get('__key__')}"
            members = {k: v for k, v in sample.items() if not k.startswith("__")}
            try:
                ext = image_member(members, self.image_ext)
                yield where, members[ext], label_value(members, self.label_field)
            except (DataError, ValueError, UnicodeDecodeError) as e:
                on_bad(where, e)


def _stamp(url: str) -> list[int]:
    """(size, mtime) of a local shard, so a changed file is surveyed again; [] for URLs."""
    p = Path(url)
    if url.startswith(_SCHEMES) or not p.is_file():
        return []
    st = p.stat()
    return [st.st_size, st.st_mtime_ns]


# ------------------------------------------------------------------ dispatch


def is_wds_spec(spec: str) -> bool:
    """Whether ``spec`` is a WebDataset URL or pattern (not a plain path)."""
    if spec.startswith(("hf:", "hf+stream:")):
        return False
    return spec.startswith(_SCHEMES) or bool(_BRACES.search(spec)) or "::" in spec


def is_wds_folder(path: Path) -> bool:
    """A folder (not ``supmim data pack``'s) holding ``train-*.tar`` shards."""
    return path.is_dir() and not (path / INDEX).exists() and any(
        _SPLIT.match(p.name) and p.name.startswith("train") for p in path.iterdir())


def expand_shards(spec: str) -> list[str]:
    """The shard URLs of a pattern / ``::`` list, as webdataset expands them."""
    wds = _need_webdataset()
    urls = [u for u in wds.shardlists.expand_urls(spec) if u]
    if not urls:
        raise DataError(f"--data {spec!r} expands to no shard")
    return urls


def _local(urls: list[str]) -> bool:
    return not any(u.startswith(_SCHEMES) for u in urls)


def _read_split(urls: list[str], ctx: ReadContext) -> tuple[Any, list[Any]]:
    """One split: ``("indexed", shards, index)`` or ``("stream", stream, count)``, and its
    raw labels (for the classes)."""
    o = ctx.options
    if _local(urls):
        missing = [u for u in urls if not Path(u).is_file()]
        if missing:
            raise DataError(f"{len(missing)} shard file(s) of {ctx.spec!r} do not exist, e.g. "
                            f"{missing[0]}; check the pattern")
    if _local(urls) and not o.streaming and all(u.endswith(".tar") for u in urls):
        shards = [Path(u).resolve() for u in urls]
        index = _index(shards, ctx)
        if not index["rows"]:
            raise DataError(f"no labelled image in {ctx.spec!r} ({index['problems']} problem(s) "
                            "indexing it); each sample needs KEY.jpg|png|... and KEY.cls or "
                            "KEY.json with a label (set data.image_column / data.label_column)")
        return ("indexed", shards, index), index["labels"]
    stream = WdsStream(urls, o.image_column, o.label_column)
    count, labels = survey(stream, cache_root(ctx.cache_dir))
    if count == 0:
        raise DataError(f"no labelled image in {stream.name}; each sample needs KEY.jpg|png|... "
                        "and KEY.cls or KEY.json with a label")
    return ("stream", stream, count), labels


def _build(split: tuple[Any, ...], classes: list[str], names: dict[str, int] | None) -> Any:
    kind, what, extra = split
    if kind == "indexed":
        return _indexed(what, extra, classes, names)
    return StreamingImages(what, extra, classes, None, 3, train=False, class_index=names)


def _folder_splits(path: Path) -> tuple[list[str], list[str], str]:
    """(train shards, evaluation shards, evaluation split name) of a shard folder."""
    by: dict[str, list[str]] = {}
    for p in sorted(path.iterdir()):
        m = _SPLIT.match(p.name)
        if m and p.is_file():
            by.setdefault({"validation": "val"}.get(m.group(1), m.group(1)), []).append(str(p))
    test = "val" if "val" in by else "test"
    return by["train"], by.get(test, []), test


def _load(train: list[str], test: list[str], test_name: str, ctx: ReadContext) -> DataSource:
    o = ctx.options
    if o.test_data:
        test, test_name = expand_shards(o.test_data), "test"
    tr, train_labels = _read_split(train, ctx)
    te, test_labels = _read_split(test, ctx) if test else (None, [])
    classes, names = classes_of([*train_labels, *test_labels])
    return split_source(ctx.name, _build(tr, classes, names),
                        _build(te, classes, names) if te else None, test_name, classes)


def _read_spec(path: Path, ctx: ReadContext) -> DataSource:
    """The reader's load for a pattern / URL spec."""
    return _load(expand_shards(ctx.spec), [], "test", ctx)


def _read_folder(path: Path, ctx: ReadContext) -> DataSource:
    """The reader's load for a folder of ``train-*.tar`` (+ ``val-``/``test-``) shards."""
    train, test, name = _folder_splits(path)
    return _load(train, test, name, ctx)


register_reader("webdataset-url", None, _read_spec, order=12, claims=is_wds_spec,
                options=ALL_OPTIONS)
register_reader("webdataset-folder", is_wds_folder, _read_folder, order=12, in_archives=False,
                options=ALL_OPTIONS)
