"""A cost bound for JSON read from a checkpoint, checked before json.loads.

json.loads turns every `[]` or `{}` into a Python object of about 72 bytes, every array element into at
least a pointer and often a 50-90 byte object, and every object member with a new key into ~200 bytes
(key, pair, dict slot): text that compresses 1000x, or a 100 MB header of `[],[],...`, became gigabytes
before any check could see it. Both counts are bounded here by counting bytes: `[` + `{` bounds the
containers, `,` + `:` the items (an element has a comma after it but for the last one, a member a colon
and a comma; the same characters inside strings only over-count). bytes.count runs at C speed (~20 ms per
count for 100 MB), so a real file costs little and a hostile one is refused before it is parsed."""

from __future__ import annotations

from wdist.loaders.errors import CorruptCheckpointError


def check(path: str, data: bytes, what: str, max_containers: int, max_items: int) -> None:
    """Raise CorruptCheckpointError when `data` (JSON text) may hold more than `max_containers` arrays and
    objects together or more than `max_items` commas and colons together (about one per array element,
    two per object member)."""
    # each counted character is one byte: shorter text cannot be over a limit and is not scanned at all
    if len(data) > max_containers:
        containers = data.count(b"[") + data.count(b"{")
        if containers > max_containers:
            raise CorruptCheckpointError(path, f"{what} holds {containers:,} JSON arrays/objects, over the "
                                               f"limit of {max_containers:,}")
    if len(data) > max_items:
        items = data.count(b",") + data.count(b":")
        if items > max_items:
            raise CorruptCheckpointError(path, f"{what} holds {items:,} JSON items (commas and colons), over "
                                               f"the limit of {max_items:,}")
