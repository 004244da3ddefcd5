"""WBI request signing (``w_rid`` + ``wts``), required by getDanmuInfo since 2025-05 (-352 without it).

Algorithm (bilibili-API-collect ``docs/misc/sign/wbi.md``):

1. ``img_key`` and ``sub_key`` are the file stems of ``data.wbi_img.img_url`` / ``sub_url`` of the nav API
   (``/x/web-interface/nav``; answered even when not logged in, with code -101). They change daily.
2. ``mixin_key`` = the first 32 characters of ``(img_key + sub_key)`` permuted by :data:`MIXIN_KEY_ENC_TAB`.
3. Add ``wts`` (unix seconds), drop ``!'()*`` from every value, sort by key, URL-encode (uppercase
   ``%XX``, space as ``%20``), append ``mixin_key``: ``w_rid`` = its MD5 hex digest.

Known vector from that document: img_key ``7cd084941338484aae1ad9425b84077c`` + sub_key
``4932caff0ff746eab6f01bf08b70ac45`` -> mixin_key ``ea1db124af3c7062474693fa704f4ff8``; params
``foo=114, bar=514, zab=1919810`` at ``wts=1702204169`` -> ``w_rid=8f6f2b5b3d485fe1886cec6a0be8c5d4``.
"""

from __future__ import annotations

import hashlib
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MIXIN_KEY_ENC_TAB", "WbiKeys", "encode_query", "key_from_url", "mixin_key", "sign"]

# The fixed permutation table (bilibili-API-collect docs/misc/sign/wbi.md, MIXIN_KEY_ENC_TAB).
MIXIN_KEY_ENC_TAB = (
    46, 47, 18, 2, 53, 8, 23, 32, 15, 50, 10, 31, 58, 3, 45, 35, 27, 43, 5, 49,
    33, 9, 42, 19, 29, 28, 14, 39, 12, 38, 41, 13, 37, 48, 7, 16, 24, 55, 40,
    61, 26, 17, 0, 1, 60, 51, 30, 4, 22, 25, 54, 21, 56, 59, 6, 63, 57, 62, 11,
    36, 20, 34, 44, 52,
)
_FILTERED = str.maketrans("", "", "!'()*")


@dataclass(frozen=True)
class WbiKeys:
    img_key: str
    sub_key: str

    @classmethod
    def from_nav(cls, nav_data: Mapping[str, Any]) -> WbiKeys:
        """From the nav API's ``data`` object; ValueError naming the field if it is not there."""
        wbi_img = nav_data.get("wbi_img")
        if not isinstance(wbi_img, Mapping):
            raise ValueError(f"nav data has no wbi_img object: keys={sorted(nav_data)}")
        return cls(key_from_url(wbi_img.get("img_url")), key_from_url(wbi_img.get("sub_url")))

    @property
    def mixin_key(self) -> str:
        return mixin_key(self.img_key, self.sub_key)


def key_from_url(url: Any) -> str:
    """``https://i0.hdslb.com/bfs/wbi/7cd0...077c.png`` -> ``7cd0...077c``."""
    if not isinstance(url, str) or "/" not in url:
        raise ValueError(f"WBI key url is {url!r}, expected an https://.../<key>.png url")
    key = url.rsplit("/", 1)[1].split(".", 1)[0]
    if not key:
        raise ValueError(f"WBI key url {url!r} has no file name")
    return key


def mixin_key(img_key: str, sub_key: str) -> str:
    raw = img_key + sub_key
    if len(raw) < len(MIXIN_KEY_ENC_TAB):
        raise ValueError(f"WBI keys give {len(raw)} characters, need {len(MIXIN_KEY_ENC_TAB)} (img_key + sub_key)")
    return "".join(raw[i] for i in MIXIN_KEY_ENC_TAB)[:32]


def encode_query(params: Mapping[str, Any]) -> str:
    """``k=v&...`` in the given order, percent-encoded like JavaScript's encodeURIComponent."""
    return "&".join(f"{urllib.parse.quote(str(k), safe='')}={urllib.parse.quote(str(v), safe='')}"
                    for k, v in params.items())


def sign(params: Mapping[str, Any], keys: WbiKeys, *, wts: int | None = None) -> dict[str, str]:
    """``params`` (filtered, as strings) plus ``wts`` and ``w_rid``, sorted by key: ready for the query."""
    signed = {str(k): str(v).translate(_FILTERED) for k, v in params.items()}
    signed["wts"] = str(int(time.time()) if wts is None else wts)
    signed = dict(sorted(signed.items()))
    signed["w_rid"] = hashlib.md5((encode_query(signed) + keys.mixin_key).encode("utf-8")).hexdigest()
    return signed
