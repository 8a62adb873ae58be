"""Inputs for fuzzing the gateway's parsers: real seed images, header surgery, mutations and
control-message strategies. Shared by tests/test_fuzz.py and bench/fuzz_atheris.py."""

from __future__ import annotations

import io
import json
import struct
import zlib
from typing import Any

from hypothesis import strategies as st
from PIL import Image

from edge.codec import CONFIG_KEYS
from tests.conftest import jpeg, png

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# SOFn markers: C0-CF except DHT (C4), JPG (C8) and DAC (CC)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _encode(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def seed_images() -> list[bytes]:
    """Real frames of every flavour the decoders take: photos, progressive, grey, CMYK JPEG;
    PNG in the modes Pillow writes (bilevel, grey, alpha, palette, 16-bit)."""
    small = Image.open(io.BytesIO(jpeg("astronaut.png", (48, 40)))).convert("RGB")
    out = [
        jpeg("astronaut.png", (96, 80)),
        jpeg("rocket.jpg", (64, 40), quality=30),
        _encode(small, "JPEG", progressive=True),
        _encode(small.convert("L"), "JPEG"),
        _encode(small.convert("CMYK"), "JPEG"),
        _encode(small, "JPEG", subsampling=0, quality=95),
        png("coins.png"),
        _encode(small, "PNG"),
    ]
    for mode in ("1", "L", "LA", "P", "RGBA", "I;16"):
        out.append(_encode(small.convert(mode), "PNG"))
    return out


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """`data` with the frame header (SOFn) claiming `width` x `height` (0..65535)."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ValueError("not a JPEG marker")
        marker = data[i + 1]
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF:
            return data[: i + 5] + struct.pack(">HH", height, width) + data[i + 9 :]
        i += 2 + length
    raise ValueError("no SOF marker")


def png_with_size(data: bytes, width: int, height: int, fix_crc: bool = True) -> bytes:
    """`data` with IHDR claiming `width` x `height` (0..2**32-1), its CRC fixed or left stale."""
    assert data[12:16] == b"IHDR"
    ihdr = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
    crc = struct.pack(">I", zlib.crc32(ihdr)) if fix_crc else data[29:33]
    return data[:12] + ihdr + crc + data[33:]


def png_with_chunk(data: bytes, kind: bytes, payload: bytes, at_end: bool = False) -> bytes:
    """`data` with one more chunk right after IHDR, or (`at_end`) right before IEND, where
    Pillow reads it only when it decodes the pixels."""
    chunk = struct.pack(">I", len(payload)) + kind + payload
    chunk += struct.pack(">I", zlib.crc32(kind + payload))
    at = len(data) - 12 if at_end else 33
    assert data[at + 4 : at + 8] == (b"IEND" if at_end else data[at + 4 : at + 8])
    return data[:at] + chunk + data[at:]


def png_parser_crash() -> bytes:
    """A PNG with an empty iCCP chunk after its pixels: Pillow 13 raises IndexError from
    load(), not an OSError (found by bench/fuzz_atheris.py)."""
    small = Image.open(io.BytesIO(jpeg("astronaut.png", (48, 40)))).convert("RGB")
    return png_with_chunk(_encode(small, "PNG"), b"iCCP", b"", at_end=True)


def mutate(data: bytes, draw: Any) -> bytes:
    """One to four edits of `data` (truncate, bit flip, overwrite, delete, duplicate, insert),
    their positions biased towards the headers, where parsers make their decisions."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        n = len(out)
        if n < 2:
            break
        pos = draw(st.one_of(st.integers(0, min(n - 1, 700)), st.integers(0, n - 1)))
        op = draw(st.sampled_from(["truncate", "flip", "overwrite", "delete", "dup", "insert"]))
        if op == "truncate":
            del out[pos:]
        elif op == "flip":
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite":
            junk = draw(st.binary(min_size=1, max_size=8))
            out[pos : pos + len(junk)] = junk
        elif op == "delete":
            del out[pos : pos + draw(st.integers(1, 64))]
        elif op == "dup":
            out[pos:pos] = out[pos : pos + draw(st.integers(1, 256))]
        else:
            out[pos:pos] = draw(st.binary(min_size=1, max_size=32))
    return bytes(out)


@st.composite
def mutated_images(draw: Any, seeds: list[bytes]) -> bytes:
    return mutate(draw(st.sampled_from(seeds)), draw)


def bad_frames(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """Anything a client could send as a frame: noise, noise behind the right magic, mutated
    real images, real images whose headers claim other sizes."""
    magic = st.sampled_from([JPEG_MAGIC, PNG_MAGIC, b"\xff\xd8", b"\x89PNG", b"GIF89a", b""])
    resized = st.builds(
        lambda d, w, h: jpeg_with_size(d, w, h),
        st.sampled_from([s for s in seeds if s.startswith(JPEG_MAGIC)]),
        st.integers(0, 65535),
        st.integers(0, 65535),
    ) | st.builds(
        png_with_size,
        st.sampled_from([s for s in seeds if s.startswith(PNG_MAGIC)]),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.booleans(),
    )
    return st.one_of(
        st.binary(max_size=512),
        st.builds(lambda m, b: m + b, magic, st.binary(max_size=512)),
        mutated_images(seeds),
        resized,
    )


# -- control messages ----------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**63, -(2**63) - 1, 2**1024, 10**400, -(10**400)])  # past float
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
#: values a client might put in a config field: plausible ones near the limits, and nonsense
field_values = st.one_of(
    json_values,
    st.floats(-1.0, 2.0),
    st.sampled_from([0, 0.5, 1, 0.25, 1e-9, 3.6e6, 3600, 3601, 0.49, "blazeface", "blazeface@1"]),
    st.sampled_from(["blazeface@2", "nope", "a" * 129, "../x", "ÿ", "blaze face", "@1"]),
    st.sampled_from(["door-3", "site/door_3", "a/+", "#", "x.*", ">", "/a", "a/", "a//b"]),
)


@st.composite
def control_objects(draw: Any) -> dict[str, Any]:
    """JSON objects shaped like control messages: mostly the right types, some not."""
    kind = draw(st.sampled_from(["config", "config", "stats", "ping", "Config", "", None, 7]))
    obj: dict[str, Any] = {"type": kind}
    for key in draw(st.lists(st.sampled_from(CONFIG_KEYS), unique=True, max_size=5)):
        obj[key] = draw(field_values)
    if draw(st.integers(0, 9)) == 0:
        obj[draw(st.text(max_size=10))] = draw(json_values)
    return obj


def control_texts() -> st.SearchStrategy[str]:
    """Text a client could send: control-shaped JSON, any JSON, any text, cut JSON."""
    as_json = st.builds(lambda o: json.dumps(o, allow_nan=True), control_objects())
    return st.one_of(
        as_json,
        st.builds(lambda v: json.dumps(v, allow_nan=True), json_values),
        st.text(max_size=200),
        st.builds(lambda t, n: t[:n], as_json, st.integers(0, 60)),
        st.builds(lambda n: "[" * n + "]" * n, st.integers(900, 2100)),
        # near the size limit, in characters of one to four UTF-8 bytes
        st.builds(
            lambda c, n: '{"type":"ping","x":"' + c * n + '"}',
            st.sampled_from("aé😀"),
            st.integers(1020, 4100),
        ),
    )
