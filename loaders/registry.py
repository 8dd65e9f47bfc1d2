"""The format registry: detection (magic bytes first, extension second), `--input-format`, model folders and
sharded indexes. Formats are plug-ins (loaders/plugin.py): built-in modules are listed in BUILTIN_FORMATS,
third-party ones register a module exposing PLUGIN (or PLUGINS) under the `wdist.formats` entry-point group."""

from __future__ import annotations

import importlib
import json
import os
import posixpath
import re
import sys
from collections.abc import Iterator, Mapping
from functools import cache

from wdist.loaders import fs, jsonbudget
from wdist.loaders.errors import (
    CorruptCheckpointError,
    MissingDependencyError,
    UnsupportedFormatError,
    WdistError,
)
from wdist.loaders.model import Checkpoint, bad_names
from wdist.loaders.plugin import SNIFF_BYTES, FormatPlugin

# Modules exposing PLUGIN (or PLUGINS); the order here does not matter, each plug-in's `order` does.
BUILTIN_FORMATS: tuple[str, ...] = (
    "wdist.loaders.fmt_builtin",
    "wdist.loaders.fmt_numpy",
    "wdist.loaders.fmt_gguf",
    "wdist.loaders.fmt_onnx",
    "wdist.loaders.fmt_tf", "wdist.loaders.fmt_dcp", "wdist.loaders.fmt_flax",
    "wdist.loaders.fmt_orbax",
)
ENTRY_POINT_GROUP = "wdist.formats"
MAX_INDEX_BYTES = 64 << 20  # a sharded index of 10^6 tensors is ~60 MB of JSON
# An index is a few objects (weight_map, metadata) and one member per tensor: 10^6 tensors are 2M items
# (a comma and a colon each). These bounds allow 2x that; the worst index found within them (1M distinct
# keys with `[]`, 1M with 0, padded to 64 MiB) peaks at 0.45 GB in `wdist ls`, where 21M `[]` under
# "metadata" took 1.6 GB.
MAX_INDEX_CONTAINERS = 1_000_000
MAX_INDEX_ITEMS = 4_000_000
SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<k>\d{5})-of-(?P<n>\d{5})(?P<ext>\.[A-Za-z0-9.]+)$")


def _module_plugins(modname: str) -> list[FormatPlugin]:
    mod = importlib.import_module(modname)
    found = getattr(mod, "PLUGINS", None) or (getattr(mod, "PLUGIN", None),)
    return [p for p in found if isinstance(p, FormatPlugin)]


@cache
def formats() -> tuple[FormatPlugin, ...]:
    """Every registered format, in detection order. Entry points that fail to load are skipped here and
    reported by `plugin_errors()` (a broken third-party package must not break the built-in formats)."""
    plugins: list[FormatPlugin] = []
    for modname in BUILTIN_FORMATS:
        plugins += _module_plugins(modname)
    for ep, err in _entry_points():
        if err is None:
            plugins += ep
    seen: dict[str, FormatPlugin] = {}
    for p in plugins:
        seen.setdefault(p.name, p)  # built-ins win over a third-party plug-in of the same name
    return tuple(sorted(seen.values(), key=lambda p: (p.order, p.name)))


def _searches_sys_path(finder: object) -> bool:
    """The finders whose distributions are exactly the *.dist-info / *.egg-info folders on sys.path: the
    standard PathFinder, and the importlib_metadata back-port's MetadataPathFinder (which packages such as
    keras or jax put on sys.meta_path when imported)."""
    from importlib.machinery import PathFinder

    cls = finder if isinstance(finder, type) else type(finder)
    return cls is PathFinder or (cls.__name__ == "MetadataPathFinder"
                                 and cls.__module__.split(".")[0] in ("importlib", "importlib_metadata"))


def _may_declare_plugins() -> bool:
    """False only when no installed distribution can declare a `wdist.formats` entry point: no path entry's
    *.dist-info / *.egg-info has an entry_points.txt naming the group. importlib.metadata parses every
    distribution's metadata to answer (30-50 ms of every command here, most of it for the usual answer, none);
    anything this scan cannot see for itself (a zip or egg on sys.path, a finder that supplies distributions
    of its own, an unreadable folder) leaves the answer to importlib.metadata."""
    for finder in sys.meta_path:
        if getattr(finder, "find_distributions", None) is not None and not _searches_sys_path(finder):
            return True
    needle = ENTRY_POINT_GROUP.encode()
    for entry in sys.path:
        if isinstance(entry, os.PathLike):  # sys.path.insert(0, Path(...)) is common in notebooks
            entry = os.fspath(entry)
        if not isinstance(entry, str):
            return True
        root = entry or "."
        try:
            if not os.path.isdir(root) or root.lower().endswith(".egg"):
                if os.path.exists(root):
                    return True
                continue
            with os.scandir(root) as it:
                names = [de.name for de in it if de.name.lower().endswith((".dist-info", ".egg-info"))]
            for name in names:
                try:
                    with open(os.path.join(root, name, "entry_points.txt"), "rb") as f:
                        if needle in f.read():
                            return True
                except (FileNotFoundError, NotADirectoryError):
                    continue
        except OSError:
            return True
    return False


@cache
def _entry_points() -> tuple[tuple[list[FormatPlugin], str | None], ...]:
    if not _may_declare_plugins():
        return ()
    from importlib.metadata import entry_points

    out: list[tuple[list[FormatPlugin], str | None]] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if isinstance(obj, FormatPlugin):
                out.append(([obj], None))
            else:
                found = getattr(obj, "PLUGINS", None) or (getattr(obj, "PLUGIN", None),)
                out.append(([p for p in found if isinstance(p, FormatPlugin)], None))
        except Exception as e:  # a third-party plug-in's import error is reported, not raised
            out.append(([], f"{ep.name}: {type(e).__name__}: {e}"))
    return tuple(out)


def plugin_errors() -> list[str]:
    return [err for _, err in _entry_points() if err]


def format_names() -> list[str]:
    return [p.name for p in formats()]


def get_format(name: str) -> FormatPlugin:
    for p in formats():
        if p.name == name:
            return p
    raise UnsupportedFormatError(None, f"unknown input format {name!r}; choose from {', '.join(format_names())}")


def supported() -> str:
    """One line naming every format, for error messages."""
    return "; ".join(f"{p.title} ({' '.join(p.extensions)})" if p.extensions else p.title for p in formats())


class _Extensions(Mapping[str, str]):
    """File-name ending -> format name, computed from the registry on first use."""

    def _table(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for p in formats():
            for e in p.extensions:
                out.setdefault(e, p.name)
        return out

    def __getitem__(self, key: str) -> str:
        return self._table()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


EXTENSIONS: Mapping[str, str] = _Extensions()


def __getattr__(name: str) -> str:  # SUPPORTED stays importable without scanning plug-ins at import time
    if name == "SUPPORTED":
        return supported()
    raise AttributeError(name)


def is_checkpoint_name(path: str) -> bool:
    name = path.lower()
    return any(name.endswith(e) for e in EXTENSIONS) or name.endswith(".index.json")


def require_regular(path: str) -> fs.Stat:
    """Only regular files (or remote objects) are read: a FIFO, device or socket would block or never end."""
    try:
        st = fs.stat(path)
    except FileNotFoundError:
        raise WdistError(path, "no such file or directory") from None
    except OSError as e:
        raise WdistError(path, f"cannot be read ({e.strerror or type(e).__name__})") from None
    if st.is_dir:
        raise WdistError(path, "is a directory")
    if not st.is_file:
        raise UnsupportedFormatError(path, "not a regular file (a FIFO, device or socket is never read)")
    return st


def _head(path: str) -> bytes:
    require_regular(path)
    try:
        return fs.pread(path, 0, SNIFF_BYTES)
    except OSError as e:
        raise WdistError(path, f"cannot be read ({e.strerror or type(e).__name__})") from None


def sniff(path: str) -> str:
    """The format name of a single file, from its first bytes; the extension only breaks ties."""
    head = _head(path)
    if not head:
        raise CorruptCheckpointError(path, "file is empty")
    name = path.lower()
    hits = []
    for p in formats():
        if p.sniff is None:
            continue
        try:
            ok = p.sniff(head, path)
        except Exception:  # a sniffer must not raise; one that does simply does not claim the file
            ok = False
        if ok:
            hits.append(p)
    if hits:
        by_ext = [p for p in hits if any(name.endswith(e) for e in p.extensions)]
        return (by_ext or hits)[0].name
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):  # several formats are zips: say which part failed

        from wdist.loaders.fileio import ZIP_ERRORS, open_zip

        try:  # through fs: a URL is not a local path (zipfile opened it as one: "No such file or directory")
            with open_zip(path) as z:
                z.infolist()
        except ZIP_ERRORS as e:
            raise CorruptCheckpointError(path, f"zip archive is damaged or truncated ({str(e)[:80]})") from None
        raise UnsupportedFormatError(path, "zip archive is not a checkpoint any registered format reads "
                                     "(no data.pkl, no model.weights.h5)")
    for p in formats():  # a damaged file with a telling extension: let its reader say what is wrong
        if (p.fallback_by_extension or p.sniff is None) and any(name.endswith(e) for e in p.extensions):
            return p.name
    kind = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head[:16]) else "unrecognised binary data"
    raise UnsupportedFormatError(path, f"{kind}, not a supported checkpoint; wdist reads {supported()}")


def _run_loader(plugin: FormatPlugin, path: str) -> Checkpoint:
    if not plugin.available():
        extra = f"pip install 'wdist[{plugin.extra}]'" if plugin.extra else "pip install " + " ".join(plugin.requires)
        raise MissingDependencyError(path, f"reading {plugin.title} needs {', '.join(plugin.requires)} ({extra})")
    try:
        ck = plugin.load(path)
    except WdistError as e:
        if e.path is None:
            raise type(e)(path, e.reason) from None
        raise
    except RecursionError:
        raise CorruptCheckpointError(path, f"cannot be read as {plugin.name} (structure nested too deeply)") from None
    except MemoryError:
        raise CorruptCheckpointError(path, f"cannot be read as {plugin.name} (asks for more memory than it could "
                                     "hold)") from None
    except Exception as e:  # any other failure of a reader on a hostile file is still one line naming it
        raise CorruptCheckpointError(path, f"cannot be read as {plugin.name} ({type(e).__name__}: "
                                     f"{str(e)[:100]})") from None
    why = bad_names(ck.tensors)  # every format, plug-ins included: no name too long or ambiguous
    if why is not None:
        ck.close()
        raise CorruptCheckpointError(path, why)
    return ck


def load_file(path: str, fmt: str | None = None) -> Checkpoint:
    """One file as a Checkpoint. A forced format skips detection entirely."""
    if fmt is None and path.endswith(".index.json"):
        return _load_index(path)
    if fmt is not None:
        plugin = get_format(fmt)
        require_regular(path)
    else:
        plugin = get_format(sniff(path))
    return _run_loader(plugin, path)


def _load_index(path: str) -> Checkpoint:
    """Hugging Face sharded index: {"weight_map": {tensor: shard file}}."""
    st = require_regular(path)
    if st.size > MAX_INDEX_BYTES:
        raise CorruptCheckpointError(path, f"sharded index is {st.size} bytes, over the {MAX_INDEX_BYTES}-byte limit")
    raw = fs.pread(path, 0, st.size)
    jsonbudget.check(path, raw, "sharded index", MAX_INDEX_CONTAINERS, MAX_INDEX_ITEMS)
    try:
        text = raw.decode("utf-8")
        del raw  # the bytes and the text are not both held while the JSON is parsed
        index = json.loads(text)
        del text
        weight_map = index["weight_map"]
        shards = list(dict.fromkeys(str(v) for v in weight_map.values()))
    except RecursionError:
        raise CorruptCheckpointError(path, "sharded index JSON is nested too deeply") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CorruptCheckpointError(path, "sharded index is not JSON with a weight_map") from None
    url = fs.is_url(path)
    base = fs.dirname(path) if url else os.path.dirname(os.path.abspath(path))
    sep = "/" if url else os.sep
    files = []
    for s in shards:
        fp = fs.join(base, s)
        fp = fp.split("://", 1)[0] + "://" + posixpath.normpath(fp.split("://", 1)[1]) if url else os.path.normpath(fp)
        if (s.startswith(("/", "\\")) or os.path.isabs(s) or "://" in s or not fp.startswith(base + sep)
                or not fs.inside_model_folder(fp, base)):
            raise CorruptCheckpointError(path, f"shard {s!r} points outside the index's folder")
        if s.endswith(".index.json") or fs.isdir(fp):
            raise CorruptCheckpointError(path, f"shard {s!r} is not a weights file (an index cannot name an index)")
        if not fs.exists(fp):
            raise CorruptCheckpointError(path, f"shard {s!r} named in the index is missing")
        require_regular(fp)
        files.append(fp)
    if not files:
        raise CorruptCheckpointError(path, "sharded index names no shards")
    if all(f.endswith(".safetensors") for f in files):
        from wdist.loaders.safetensors_loader import load_safetensors_files

        try:
            return load_safetensors_files(path, files, "sharded")
        except WdistError:
            raise
        except Exception as e:
            raise CorruptCheckpointError(path, f"cannot be read ({type(e).__name__}: {str(e)[:100]})") from None
    parts = [load_file(f) for f in files]
    first = parts[0]
    owner = {t.name: first.sources[0] if first.sources else files[0] for t in first.tensors}
    for p, shard in zip(parts[1:], files[1:]):
        for t in p.tensors:
            if t.name in owner:
                raise CorruptCheckpointError(path, f"tensor {t.name!r} is in two shards: "
                                             f"{fs.basename(owner[t.name])} and {fs.basename(shard)}")
            owner[t.name] = shard
        first.tensors += p.tensors
        first.unsafe_globals += [g for g in p.unsafe_globals if g not in first.unsafe_globals]
        first.warnings += p.warnings
        first.closers += p.closers
    first.path, first.variant, first.sources = path, "sharded", files
    return first


def shard_set(names: list[str]) -> list[str] | None:
    """The files of one sharded model, when every name follows `STEM-0000K-of-0000N.EXT` with the same stem,
    extension and N, and K runs 1..N; else None."""
    groups: dict[tuple[str, str, int], dict[int, str]] = {}
    for n in names:
        m = SHARD_NAME.match(fs.basename(n))
        if not m:
            return None
        groups.setdefault((m["stem"], m["ext"], int(m["n"])), {})[int(m["k"])] = n
    if len(groups) != 1:
        return None
    (_, _, total), got = next(iter(groups.items()))
    if sorted(got) != list(range(1, total + 1)):
        return None
    return [got[k] for k in range(1, total + 1)]


def _regular_entries(folder: str, pattern: str | None = None) -> list[str]:
    out = []
    try:
        entries = fs.listdir(folder)
    except OSError:  # a local folder that is gone or cannot be listed (a run's lost+found): nothing in it
        return []
    except WdistError as e:
        if e.reason == "no such object":
            return []
        raise  # a server that fails or refuses a listing: said as such, never as a folder without checkpoints
    for p in entries:
        if pattern and not p.endswith(pattern):
            continue
        try:
            if fs.stat(p).is_file and fs.inside_model_folder(p, folder):
                out.append(p)
        except (OSError, WdistError):
            continue
    return out


def find_in_dir(path: str) -> list[str]:
    """The files of the one checkpoint a model directory holds: a sharded index, else a single safetensors
    file or one complete `-0000K-of-0000N` shard set, else one of the usual weight-file names. An empty list
    when the folder holds no checkpoint or several unrelated ones (then each is its own checkpoint:
    `wdist trend DIR` reads them one by one)."""
    for idx in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        p = fs.join(path, idx)
        if p in _regular_entries(path, ".index.json"):
            return [p]
    st = _regular_entries(path, ".safetensors")
    if len(st) == 1:
        return st
    if st:
        return shard_set(st) or []
    for name in ("pytorch_model.bin", "model.pt", "model.pth", "model.weights.h5", "model.keras", "tf_model.h5"):
        p = fs.join(path, name)
        if p in _regular_entries(path):
            return [p]
    return []


def dir_format(path: str) -> FormatPlugin | None:
    """The plug-in that reads a whole folder as one checkpoint (see FormatPlugin.sniff_dir), if any."""
    for p in formats():
        if p.sniff_dir is None:
            continue
        try:
            if p.sniff_dir(path):
                return p
        except Exception:  # a sniffer must not raise; one that does simply does not claim the folder
            continue
    return None


def is_model_dir(path: str) -> bool:
    """Whether a folder is one checkpoint (a model folder, a shard set, or a folder-format checkpoint)."""
    return bool(find_in_dir(path)) or dir_format(path) is not None


def open_checkpoint(path: str | os.PathLike[str], fmt: str | None = None) -> Checkpoint:
    """Open a file or model directory (a str or a pathlib.Path) as a lazy Checkpoint. Reads headers and
    metadata only."""
    path = os.fspath(path)
    if not fs.exists(path):
        raise WdistError(fs.redact(path), "no such file or directory")
    if fs.isdir(path):
        files = find_in_dir(path)
        plugin = get_format(fmt) if fmt is not None and not files else (None if files else dir_format(path))
        if not files and plugin is not None:
            return _run_loader(plugin, path)
        if not files:
            many = [fs.basename(e) for e in _regular_entries(path) if is_checkpoint_name(e)]
            if len(many) > 1:
                raise UnsupportedFormatError(path, f"directory holds {len(many)} separate checkpoints "
                                             f"({', '.join(many[:4])}{', ...' if len(many) > 4 else ''}); name one, "
                                             "or read them all with `wdist trend`")
            raise UnsupportedFormatError(path, f"directory holds no checkpoint; wdist reads {supported()}")
        if len(files) == 1:
            ck = load_file(files[0], fmt)
        else:
            from wdist.loaders.safetensors_loader import load_safetensors_files

            for f in files:
                if fmt is None:
                    sniff(f)
            try:
                ck = load_safetensors_files(path, files, "sharded")
            except WdistError:
                raise
            except Exception as e:
                raise CorruptCheckpointError(path, f"cannot be read ({type(e).__name__}: {str(e)[:100]})") from None
        ck.path = path
        return ck
    require_regular(path)
    if not fs.is_url(path) and not os.access(fs.local_path(path), os.R_OK):
        raise WdistError(path, "permission denied")
    return load_file(path, fmt)
