"""analyzers/text.safe: the one escaping of file/path text before display is injective (a reference decoder
inverts it), escapes every control, format and invisible (default-ignorable) character, keeps visible text
(letters, CJK, emoji, combining accents, Windows-like paths) readable; `wdist formats` pads after escaping."""

from __future__ import annotations

import itertools
import random
import re
import unicodedata

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from rich.cells import cell_len

from wdist.analyzers.text import hidden, safe

_HEX = {"x": 2, "u": 4, "U": 8}
_SHORT = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def decode(shown: str) -> str:
    """The inverse of safe(), written from its documented rules: `\\\\` is a backslash, `\\xNN`, `\\uNNNN`,
    `\\UNNNNNNNN`, `\\n`, `\\t`, `\\r` are escapes, any other backslash is itself."""
    out: list[str] = []
    i = 0
    while i < len(shown):
        ch = shown[i]
        nxt = shown[i + 1] if i + 1 < len(shown) else ""
        if ch != "\\" or nxt not in (*_HEX, *_SHORT):
            out.append(ch)
            i += 1
        elif nxt in _SHORT:
            out.append(_SHORT[nxt])
            i += 2
        else:
            digits = shown[i + 2:i + 2 + _HEX[nxt]]
            assert re.fullmatch(f"[0-9a-f]{{{_HEX[nxt]}}}", digits), (shown, i)
            out.append(chr(int(digits, 16)))
            i += 2 + _HEX[nxt]
    return "".join(out)


# the characters the review found hidden, and everything safe() emits or that looks like it
INVISIBLE = ("\u00ad", "\U000e0041", "\U000e0001", "\U000e007f", "\ufe00", "\ufe0f", "\U000e0100", "\U000e01ef",
             "\u115f", "\u1160", "\u3164", "\uffa0", "\u2060", "\u2061", "\u2062", "\u2063", "\u2064", "\u180e",
             "\u034f", "\u200b", "\u200d", "\u202e", "\u2066", "\ufeff", "\u2028", "\u2029", "\ufff9")
ALPHABET = ["\\", "x", "u", "U", "n", "t", "r", "0", "1", "a", "f", "e", "\n", "\t", "\r", "\x00", "\x1b", "\x7f",
            "\x9b", "\ud800", "\udfff", "é", "\u0301", "漢", "😀", " ", "[", "|", ".", *INVISIBLE]


def _random_strings(n: int, seed: int = 0) -> set[str]:
    rnd = random.Random(seed)
    return {"".join(rnd.choice(ALPHABET) for _ in range(rnd.randint(0, 12))) for _ in range(n)}


def _assert_visible(shown: str) -> None:
    assert not any(hidden(ch) for ch in shown), ascii(shown)
    assert not re.search("[\x00-\x1f\x7f-\x9f\ud800-\udfff]", shown), ascii(shown)


def test_the_review_pair_prints_differently():
    assert safe("a\nb.weight") == "a\\nb.weight"
    assert safe("a\\nb.weight") == "a\\\\nb.weight"
    assert safe("tag") != safe("tag\U000e0041") == "tag\\U000e0041"


def test_injective_and_decodable_on_a_large_random_set():
    strings = _random_strings(50_000)
    shown = {s: safe(s) for s in strings}
    assert len(set(shown.values())) == len(strings)  # no two strings print the same
    for s, out in shown.items():
        assert decode(out) == s, (ascii(s), ascii(out))
        _assert_visible(out)


def test_injective_on_every_short_string():
    # every string of up to 4 characters over the characters that could collide
    chars = ["\\", "\\\\", "x", "u", "n", "1", "b", "\n", "\x1b", "\u00ad"]
    seen: dict[str, str] = {}
    for k in range(5):
        for parts in itertools.product(chars, repeat=k):
            s = "".join(parts)
            out = safe(s)
            assert seen.setdefault(out, s) == s, (ascii(s), ascii(seen[out]), out)
            assert decode(out) == s


@given(st.text(alphabet=st.sampled_from(ALPHABET) | st.characters(), max_size=40))
def test_decode_inverts_safe(s):
    out = safe(s)
    assert decode(out) == s
    _assert_visible(out)


def test_concatenated_escapes_stay_decodable():
    # a string ending in a backslash is escaped so that joining it with the next escaped piece is not
    # read as an escape (the renderers build lines from several escaped pieces)
    for a, b in [("a\\", "nb"), ("a\\", "\x1b"), ("C:\\", "x1b"), ("\\", "\\")]:
        assert decode(safe(a) + safe(b)) == a + b


def test_windows_like_paths_stay_readable():
    assert safe(r"C:\models\weights.pt") == r"C:\models\weights.pt"
    assert safe(r"D:\ckpt\epoch_3\model.bin") == r"D:\ckpt\epoch_3\model.bin"
    # only a backslash that could start an escape is doubled
    assert safe(r"C:\Users\me\new\x.pt") == r"C:\\Users\me\\new\\x.pt"
    assert safe("a|b\\c.weight") == "a|b\\c.weight"


@pytest.mark.parametrize("ch", INVISIBLE)
def test_invisible_characters_are_escaped(ch):
    assert safe(f"tag{ch}x") != "tagx"
    assert ch not in safe(f"tag{ch}x")
    c = ord(ch)
    assert safe(ch) == (f"\\u{c:04x}" if c <= 0xFFFF else f"\\U{c:08x}") or safe(ch) == f"\\x{c:02x}"


def test_every_format_and_default_ignorable_character_is_escaped():
    # every Cf/Cc/Cs/Zl/Zp character of this Python's Unicode tables, and the whole
    # Default_Ignorable_Code_Point set (Unicode 15.1 DerivedCoreProperties.txt)
    ignorable = [(0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
                 (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
                 (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
                 (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF)]
    codes = {c for lo, hi in ignorable for c in range(lo, hi + 1)}
    codes |= {c for c in range(0x110000) if unicodedata.category(chr(c)) in ("Cc", "Cf", "Cs", "Zl", "Zp")}
    missed = [hex(c) for c in sorted(codes) if chr(c) in safe(chr(c))]
    assert not missed


def test_visible_text_is_kept():
    for s in ["fc1.weight", "模型.层.权重", "😀.bias", "e\u0301te\u0301", "café", "ä\u0308", "Ωμέγα", "[/x] model[v2].pt",
              "a b", "ñ", "अनुच्छेद", "한국어", "emb.\u0915\u094d\u0937"]:
        assert safe(s) == s, s


def test_formats_table_pads_names_after_escaping_by_cell_width(monkeypatch):
    from wdist.cli.main import cli
    from wdist.loaders import registry
    from wdist.loaders.plugin import FormatPlugin

    names = ["plain", "模型格式", "esc\x1bname", "a\\nb"]
    fake = tuple(FormatPlugin(name=n, title=f"T{i}", extensions=(".x",), load=lambda p: None, variants="v")
                 for i, n in enumerate(names))
    monkeypatch.setattr(registry, "formats", lambda: fake)
    monkeypatch.setattr(registry, "plugin_errors", lambda: [])
    r = CliRunner().invoke(cli, ["formats"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    heads = [ln for ln in lines if " T" in ln]
    assert [ln.split(" T")[0].rstrip() for ln in heads] == [safe(n) for n in names]
    # every title starts in the same terminal cell, the variants line under it too
    assert {cell_len(ln.split(" T")[0]) for ln in heads} == {16}
    assert {cell_len(ln) - len(ln.lstrip()) for ln in lines if ln.strip() == "v"} == {17}
    assert "\x1b" not in r.output
