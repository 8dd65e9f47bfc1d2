"""Text that came from a file or a path, made harmless before anyone displays it (terminals, HTML, plots)."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

# Default_Ignorable_Code_Point (Unicode 15.1 DerivedCoreProperties.txt) that are not of category Cf, so
# `unicodedata.category` alone misses them: invisible marks (combining grapheme joiner, Khmer inherent
# vowels, Mongolian free variation selectors, variation selectors), Hangul fillers and the reserved
# (unassigned) ranges that are default-ignorable. The Cf members of the set (soft hyphen, bidi controls,
# zero-width characters, word joiner and invisible operators, tags, ...) are also listed, so a Python whose
# Unicode tables are older still escapes them.
_IGNORABLE: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)
_IGNORABLE_SET = frozenset(c for lo, hi in _IGNORABLE for c in range(lo, hi + 1))
# categories always escaped: controls (C0, DEL, C1), format characters (bidi, zero-width, BOM,
# interlinear annotations, tags, ...), lone surrogates (the encoder would raise) and the line/paragraph
# separators U+2028/U+2029
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
# What follows a backslash in safe()'s own escapes: \\ \xNN \uNNNN \UNNNNNNNN \n \t \r
_ESCAPE_START = frozenset("\\xuUntr")
# every character that is not printable ASCII, and the backslash: each one is looked at by _replace
_CANDIDATE = re.compile(r"[^\x20-\x5b\x5d-\x7e]")


def hidden(ch: str) -> bool:
    """Whether a character is escaped by safe(): a control, format or invisible (default-ignorable)
    character, a line/paragraph separator or a lone surrogate."""
    return ord(ch) in _IGNORABLE_SET or unicodedata.category(ch) in _HIDDEN_CATEGORIES


def _escape(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    c = ord(ch)
    return f"\\x{c:02x}" if c <= 0xFF else f"\\u{c:04x}" if c <= 0xFFFF else f"\\U{c:08x}"


def _replace(m: re.Match[str]) -> str:
    ch = m.group()
    if ch == "\\":
        # a backslash stays single only where it cannot be read as the start of an escape: before a
        # character printed as itself that is not one of \ x u U n t r (C:\Users\me\models -> C:\\Users\me\models)
        s, i = m.string, m.end()
        nxt = s[i] if i < len(s) else ""
        return "\\\\" if not nxt or nxt in _ESCAPE_START or hidden(nxt) else "\\"
    return _escape(ch) if hidden(ch) else ch


def safe(s: Any) -> str:
    """Terminal-safe text: every control, format (bidi, zero-width, tag, ...) or other invisible
    (default-ignorable) character and every lone surrogate shown as a visible escape (`\\x1b`, `\\r`,
    `\\u202e`, `\\U000e0041`), and a backslash that could be read as the start of such an escape doubled, so
    different strings always print differently (the escaping is injective and can be decoded back).
    Visible letters, CJK, emoji and combining accents are kept. Rich markup is never interpreted because
    every console is created with markup off. Not idempotent: escape a string once, right before display."""
    text = s if isinstance(s, str) else str(s)
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text
    return _CANDIDATE.sub(_replace, text)
