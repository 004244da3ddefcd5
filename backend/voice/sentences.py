"""Split what the idol says into sentences, so speech starts after the first one is synthesized.

Pure text in, list out: ends at ``.``, ``!``, ``?``, ``…`` and the CJK ``。！？`` (with closing quotes or
brackets kept on their sentence); a piece shorter than ``min_chars`` joins the next one (so "Hi." does not
become a sentence of its own) and one longer than ``max_chars`` is cut at a comma or space.

Usage::

    split_sentences("Hello everyone! Today we play a game.")   # ["Hello everyone!", "Today we play a game."]
"""

from __future__ import annotations

import re

__all__ = ["split_sentences"]

_END = re.compile(r"""[.!?…。！？]+["'”’)\]」』]*\s*""")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


def _width(text: str) -> int:
    """Length for the min/max rules: a CJK character says about as much as three Latin letters."""
    return len(text) + 2 * len(_CJK.findall(text))


def _join(a: str, b: str) -> str:
    return a + b if not a or _CJK.match(b) or _CJK.search(a[-1:]) else f"{a} {b}"


def split_sentences(text: str, *, min_chars: int = 12, max_chars: int = 200) -> list[str]:
    text = text.strip()
    pieces, at = [], 0
    for m in _END.finditer(text):
        if m.end() < len(text) and not m.group().endswith((" ", "\t", "\n")) and not _CJK.search(m.group()):
            continue  # "3.5", "e.g.x": not a sentence end
        pieces.append(text[at:m.end()].strip())
        at = m.end()
    pieces.append(text[at:].strip())
    out: list[str] = []
    carry = ""
    for piece in filter(None, pieces):
        carry = _join(carry, piece)
        if _width(carry) >= min_chars:
            out.extend(_cut(carry, max_chars))
            carry = ""
    if carry:
        if out and _width(carry) < min_chars:
            out[-1] = _join(out[-1], carry)
        else:
            out.append(carry)
    return out


def _cut(text: str, max_chars: int) -> list[str]:
    out = []
    while len(text) > max_chars:
        at = max(text.rfind(", ", 0, max_chars), text.rfind(" ", 0, max_chars))
        at = at + 1 if at > 0 else max_chars
        out.append(text[:at].strip())
        text = text[at:].strip()
    return [*out, text] if text else out
