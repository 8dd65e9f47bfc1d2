"""Text that came from a file or a path, made harmless before anyone displays it (terminals, HTML, plots)."""

from __future__ import annotations

import re
from typing import Any

# Everything a terminal could act on or that hides/reorders text: C0/C1 controls, DEL, bidi embeddings,
# overrides and isolates, zero-width and line/paragraph separators, BOM, interlinear annotations, and lone
# surrogates (which would make the encoder raise).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ufff9-\ufffb"
                     "\ud800-\udfff]")
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _visible(m: re.Match[str]) -> str:
    ch = m.group()
    if ch in _SHORT:
        return _SHORT[ch]
    c = ord(ch)
    return f"\\x{c:02x}" if c <= 0xFF else f"\\u{c:04x}"


def safe(s: Any) -> str:
    """Every control, bidi or invisible character and every lone surrogate shown as a visible escape
    (`\\x1b`, `\\u202e`). Rich markup is never interpreted because every console is created with markup off."""
    text = s if isinstance(s, str) else str(s)
    return _UNSAFE.sub(_visible, text)
