"""Property-based fuzzing of every parser the gateway has, and of the server behind them.

Units: frames (edge.inference.decode.decode, then each task's preprocess), control messages
(edge.codec.parse_control), model routes (edge.models.repository.Route.parse). Against the real app:
the `model` query parameter and the unary infer endpoint, the WebRTC offer endpoint, and a
stream fed a random sequence of good and bad messages. The rule everywhere: every input is
answered with a value or a typed error, never another exception, and what comes after a bad
input is served as if it had not come.
"""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import quote

import aiohttp
import numpy as np
import pytest
import simplejpeg
from aiohttp import web
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from PIL import ImageFile

from edge.codec import Control, ProtocolError, parse_control
from edge.core.services import SERVICES
from edge.frames import FrameError
from edge.inference.decode import decode
from edge.inference.modelspec import ModelSpec
from edge.inference.tasks import get_task
from edge.models.repository import Route, UnknownModel
from edge.sinks.base import MAX_TOPIC, TOPIC
from tests.conftest import MODELS, ROOT, jpeg, running, settings_for
from tests.fuzz_util import (
    JPEG_MAGIC,
    PNG_MAGIC,
    bad_frames,
    control_texts,
    jpeg_with_size,
    json_values,
    png_parser_crash,
    png_with_chunk,
    png_with_size,
    seed_images,
)
from tests.pace import deadline, wait_until
from tests.wsclient import open_stream, read_into

SEEDS = seed_images()
GOOD = jpeg("astronaut.png", (160, 160))
SPECS = [ModelSpec.load(MODELS / name) for name in ("blazeface", "ppocr_det")]
TASKS = [get_task(spec.task)(spec) for spec in SPECS]
FIT = (128, 128)
MAX_PIXELS = 4096 * 4096
CODES = {"bad_frame", "preprocess_failed", "inference_failed", "postprocess_failed",
         "model_unavailable"}  # fmt: skip
fuzz = settings(
    database=DirectoryBasedExampleDatabase(str(ROOT / ".cache" / "hypothesis")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def check_decode(data: bytes, fit: tuple[int, int] = FIT, max_pixels: int = MAX_PIXELS) -> Any:
    """decode() returns a sane image within the limits, or raises FrameError("bad_frame")."""
    try:
        im = decode(data, fit, max_pixels)
    except FrameError as e:
        assert e.code == "bad_frame" and e.message
        return None
    h, w, c = im.pixels.shape
    assert im.pixels.dtype == np.uint8 and c == 3
    assert 0 < im.width * im.height <= max_pixels
    assert 0 < w <= im.width and 0 < h <= im.height
    return im


# -- frames ----------------------------------------------------------------------------------


@pytest.mark.unit
@settings(fuzz, max_examples=500)
@given(data=st.binary(max_size=4096), max_pixels=st.integers(1, MAX_PIXELS))
def test_decode_takes_any_bytes(data: bytes, max_pixels: int) -> None:
    """Arbitrary bytes must never raise anything but FrameError from the decoder."""
    check_decode(data, max_pixels=max_pixels)


@pytest.mark.unit
@settings(fuzz, max_examples=1500)
@given(data=bad_frames(SEEDS))
@example(data=png_parser_crash())
def test_decode_takes_mutated_real_images(data: bytes) -> None:
    """Truncated, bit-flipped, spliced and re-headered JPEG/PNG: a typed error or an image,
    and the image then survives every task's preprocess (the frame-level pipeline)."""
    im = check_decode(data)
    if im is not None:
        for task in TASKS:
            tensor, _ = task.preprocess(im)
            assert tensor.dtype == np.float32 and np.isfinite(tensor).all()
            w, h = task.spec.input_width, task.spec.input_height
            assert tensor.shape == ((h, w, 3) if task.spec.layout == "nhwc" else (3, h, w))


@pytest.mark.unit
@settings(fuzz, max_examples=300)
@given(
    seed=st.integers(0, len(SEEDS) - 1),
    width=st.integers(1, 2**31 - 1),
    height=st.integers(1, 2**31 - 1),
    max_pixels=st.sampled_from([MAX_PIXELS, 1920 * 1080, 100]),
)
@example(seed=0, width=65535, height=65535, max_pixels=MAX_PIXELS)
@example(seed=0, width=65500, height=257, max_pixels=MAX_PIXELS)
@example(seed=len(SEEDS) - 1, width=2**31 - 1, height=2**31 - 1, max_pixels=MAX_PIXELS)
def test_header_sizes_over_the_limit_are_refused_before_any_pixel_is_decoded(
    seed: int, width: int, height: int, max_pixels: int
) -> None:
    """A decompression bomb (a small file whose header claims a huge image) must be refused
    from its header: the pixel decoders are never called, so nothing is allocated."""
    data = SEEDS[seed]
    if data.startswith(JPEG_MAGIC):
        width, height = min(width, 65535), min(height, 65535)
        data = jpeg_with_size(data, width, height)
    else:
        data = png_with_size(data, width, height)
    if width * height <= max_pixels:
        return
    boom = AssertionError("pixels were decoded before the size check")
    with (
        mock.patch.object(simplejpeg, "decode_jpeg", side_effect=boom),
        mock.patch.object(ImageFile.ImageFile, "load", side_effect=boom),
        pytest.raises(FrameError) as refused,
    ):
        decode(data, FIT, max_pixels)
    assert refused.value.code == "bad_frame"
    if width <= 65500 and height <= 65500:  # libjpeg-turbo refuses larger JPEG headers itself
        assert "pixels allowed" in refused.value.message


@pytest.mark.unit
@pytest.mark.parametrize("kind", [b"iCCP", b"zTXt", b"iTXt"])
def test_a_zlib_bomb_in_a_png_chunk_costs_no_memory(kind: bytes) -> None:
    """A 100 KB chunk that inflates to 100 MB (ICC profile or text) must not be inflated."""
    bomb = zlib.compress(b"\0" * 100_000_000, 9)
    payload = {b"iCCP": b"icc\0\0", b"zTXt": b"k\0\0", b"iTXt": b"k\0\1\0\0\0"}[kind] + bomb
    data = png_with_chunk(next(s for s in SEEDS if s.startswith(PNG_MAGIC)), kind, payload)
    tracemalloc.start()
    try:
        check_decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000, f"decoding a {len(data)} B frame took {peak / 1e6:.0f} MB"


# -- control messages and routes -------------------------------------------------------------


@pytest.mark.unit
@settings(fuzz, max_examples=600)
@given(text=control_texts(), max_bytes=st.sampled_from([4096, 64]))
@example(text='{"type":"config","threshold":' + "9" * 400 + "}", max_bytes=4096)
@example(text='{"type":"config","stats_every_s":-' + "9" * 400 + "}", max_bytes=4096)
@example(text='{"type":"ping","x":"' + "é" * 2100 + '"}', max_bytes=4096)
def test_parse_control_answers_a_control_or_a_protocol_error(text: str, max_bytes: int) -> None:
    """Every text is a Control with values in range, or a ProtocolError: never another
    exception (an OverflowError here would end the client's stream with 1011)."""
    try:
        ctl = parse_control(text, max_bytes)
    except ProtocolError as e:
        assert str(e)
        return
    assert isinstance(ctl, Control) and ctl.type in ("config", "stats", "ping")
    assert len(text.encode("utf-8", "surrogatepass")) <= max_bytes
    cfg = ctl.config
    if ctl.type != "config":
        return
    assert cfg is not None
    assert cfg.threshold is None or 0.0 <= cfg.threshold <= 1.0
    assert cfg.max_frame_age_ms is None or 1.0 <= cfg.max_frame_age_ms <= 3.6e6
    assert not (cfg.clear_deadline and cfg.max_frame_age_ms is not None)
    assert cfg.stats_every_s is None or cfg.stats_every_s == 0 or 0.5 <= cfg.stats_every_s <= 3600
    assert cfg.model is None or isinstance(cfg.model, str) and 0 < len(cfg.model) <= 128
    assert cfg.credits in (None, True, False)
    assert cfg.publish in (None, True, False)
    assert cfg.topic is None or TOPIC.fullmatch(cfg.topic) and len(cfg.topic) <= MAX_TOPIC
    assert not (cfg.clear_topic and cfg.topic is not None)


@pytest.mark.unit
@fuzz
@given(text=st.text(max_size=64) | st.from_regex(r"[a-z_-]{1,8}(@[0-9a-z]{0,4})?", fullmatch=True))
def test_route_parse_answers_a_route_or_unknown_model(text: str) -> None:
    """A model reference is a Route whose name is [alnum_-]+, or UnknownModel."""
    try:
        route = Route.parse(text)
    except UnknownModel as e:
        assert str(e)
        return
    name, _, version = text.partition("@")
    assert route == Route(name, version or None)
    assert route.name and all(c.isalnum() or c in "_-" for c in route.name)


# -- the real app ----------------------------------------------------------------------------


@pytest.fixture
async def small_server(face_repo: Path) -> AsyncIterator[tuple[str, web.Application]]:
    """The app with BlazeFace and a 256 KiB frame limit (cheap oversized frames)."""
    # every good offer opens a session from this one address: no per-address stream cap
    settings = settings_for(
        face_repo, max_frame_bytes=256 * 1024, max_streams=1000, max_streams_per_client=0
    )
    async with running(settings) as served:
        yield served


params = st.text(st.characters(exclude_categories=("Cs",)), max_size=24)


@pytest.mark.integration
@settings(fuzz, max_examples=200)
@given(model=params | st.sampled_from(["blazeface", "blazeface@1", "blazeface@2"]), th=params)
async def test_model_and_threshold_params_via_the_real_handlers(
    small_server: tuple[str, web.Application], model: str, th: str
) -> None:
    """`?model=` on the stream and the model and `?threshold=` of the unary call: a known model
    is served, anything else is a 4xx with a JSON error body, never a 500."""
    url, _ = small_server
    known = model in ("blazeface", "blazeface@1")
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/v1/stream", params={"model": model}) as r:  # no upgrade
            if known:
                assert r.status == 400  # found the model, then refused: not a WebSocket request
            else:
                assert r.status == 404 and (await r.json())["error"] == "unknown_model"
        path = f"{url}/v1/models/{quote(model, safe='')}/infer"
        async with http.post(path, params={"threshold": th}, data=GOOD) as r:
            assert r.status < 500
            if r.status == 200:
                assert known and (await r.json())["type"] == "result"
            elif r.content_type == "application/json":
                reply = await r.json()
                assert reply.get("code") or reply.get("error"), reply


_FINGERPRINT = (
    "D8:1B:43:A9:95:17:76:67:D3:35:A0:D5:22:A4:A0:61:"
    "87:6E:91:A7:7F:67:64:27:5F:5A:8F:8C:39:22:C7:49"
)
#: an offer as aiortc makes it: a sendonly camera (VP8, H264) and a data channel
OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 4004703232 4004703232 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=msid-semantic:WMS *",
        "m=video 57374 UDP/TLS/RTP/SAVPF 97 98 99 100",
        "c=IN IP4 127.0.0.1",
        "a=sendonly",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=mid:0",
        "a=msid:f898692d-ccbb-4fd5 946ab4ab-9dd6-4e57",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=rtcp-mux",
        "a=ssrc-group:FID 4270242303 2209927570",
        "a=ssrc:4270242303 cname:33c90495-3052-4f1d",
        "a=ssrc:2209927570 cname:33c90495-3052-4f1d",
        "a=rtpmap:97 VP8/90000",
        "a=rtcp-fb:97 nack",
        "a=rtcp-fb:97 nack pli",
        "a=rtcp-fb:97 goog-remb",
        "a=rtpmap:98 rtx/90000",
        "a=fmtp:98 apt=97",
        "a=rtpmap:99 H264/90000",
        "a=fmtp:99 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        "a=rtpmap:100 rtx/90000",
        "a=fmtp:100 apt=99",
        "a=candidate:f957a2332b1715da3b0ef8ba684454eb 1 udp 2130706431 127.0.0.1 57374 typ host",
        "a=end-of-candidates",
        "a=ice-ufrag:ubp9",
        "a=ice-pwd:NUiLjRv8StTMinVR3RXzsl",
        "a=fingerprint:sha-256 " + _FINGERPRINT,
        "a=setup:actpass",
        "m=application 38155 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 127.0.0.1",
        "a=mid:1",
        "a=sctp-port:5000",
        "a=max-message-size:262144",
        "a=candidate:f957a2332b1715da3b0ef8ba684454eb 1 udp 2130706431 127.0.0.1 38155 typ host",
        "a=end-of-candidates",
        "a=ice-ufrag:ubp9",
        "a=ice-pwd:NUiLjRv8StTMinVR3RXzsl",
        "a=fingerprint:sha-256 " + _FINGERPRINT,
        "a=setup:actpass",
        "",
    ]
)

GOOD_OFFER = json.dumps({"sdp": OFFER, "type": "offer"}).encode()


@st.composite
def mangled_offers(draw: Any) -> bytes:
    lines = OFFER.split("\r\n")
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "dup", "cut", "junk"]))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "cut":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        else:
            lines[i] = draw(st.text(max_size=40))
    body = {"sdp": "\r\n".join(lines), "type": draw(st.sampled_from(["offer", "offer", "answer"]))}
    if draw(st.booleans()):
        body["model"] = draw(st.sampled_from(["blazeface", "blazeface@1", "nope", "", "a@b@c"]))
    if draw(st.booleans()):
        body["annotate"] = draw(json_values)
    return json.dumps(body, allow_nan=True).encode()


offer_bodies = st.one_of(
    mangled_offers(),
    st.builds(lambda v: json.dumps(v, allow_nan=True).encode(), json_values),
    st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(st.sampled_from(
        ["sdp", "type", "model", "annotate", "token"]), st.none() | st.integers() | st.text(
        max_size=30) | st.sampled_from(["offer", OFFER]))),
    st.binary(max_size=300),
)  # fmt: skip


@pytest.mark.integration
@settings(fuzz, max_examples=150)
@given(body=offer_bodies)
@example(body=GOOD_OFFER)
async def test_webrtc_offer_answers_bad_offers_with_4xx_json(
    small_server: tuple[str, web.Application], body: bytes
) -> None:
    """An arbitrary body or a mangled SDP offer is refused with a 4xx JSON error, never a 500,
    and the gateway goes on serving."""
    url, app = small_server
    routes = [getattr(r, "canonical", "") for r in app.router.resources()]
    assert "/v1/webrtc/offer" in routes, "the WebRTC offer route is missing (aiortc not installed?)"
    async with aiohttp.ClientSession() as http:
        headers = {"Content-Type": "application/json"}
        async with http.post(url + "/v1/webrtc/offer", data=body, headers=headers) as r:
            assert r.status < 500, await r.text()
            assert r.content_type == "application/json"
            reply = await r.json()
        if r.status == 200:  # a mangling aiortc shrugs off: a real answer
            assert reply["type"] == "answer" and reply["sdp"].startswith("v=0"), reply
        else:
            assert reply["error"] in ("bad_offer", "unknown_model") and reply["message"], reply
        event(f"{r.status} {reply.get('error', '')}")
        if body == GOOD_OFFER:
            assert r.status == 200, "the unmangled offer must be answered"
        async with http.get(url + "/healthz") as r:
            assert r.status == 200


# -- one stream, fed good and bad messages in any order --------------------------------------

stream_messages = st.lists(
    st.one_of(
        st.tuples(st.just("good"), st.none()),
        st.tuples(st.just("bad"), bad_frames(SEEDS)),
        st.tuples(st.just("big"), st.integers(1, 3 * 256 * 1024 - 1)),  # bytes over the limit
        st.tuples(st.just("text"), control_texts()),
    ),
    min_size=1,
    max_size=12,
)  # fmt: skip


def at_most_two_big_in_a_row(messages: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Three oversized frames in a row close the stream with 1009, by design
    (max_oversize_frames): the third becomes a good frame."""
    out, run = [], 0
    for kind, payload in messages:
        if kind == "big":
            run += 1
            if run == 3:
                kind, payload, run = "good", None, 0
        elif kind != "text":
            run = 0
        out.append((kind, payload))
    return out


def expected_control(app: web.Application, text: str) -> tuple[str, bool]:
    """What the server must answer to `text`, and whether it turns periodic stats on."""
    services = app[SERVICES]
    try:
        ctl = parse_control(text, services.settings.max_message_bytes)
    except ProtocolError:
        return "error:bad_message", False
    if ctl.type != "config" or ctl.config is None:
        return {"stats": "stats", "ping": "pong"}[ctl.type], False
    if ctl.config.model is not None:
        try:
            services.repo.resolve(services.repo.assign(Route.parse(ctl.config.model), "x"))
        except UnknownModel:
            return "error:unknown_model", False
    return "config", bool(ctl.config.stats_every_s)


@pytest.mark.integration
@settings(fuzz, max_examples=250)
@given(messages=stream_messages)
@example(messages=[("text", '{"type":"config","threshold":1' + "0" * 400 + "}"), ("good", None)])
@example(messages=[("big", 1), ("text", '{"type":"ping"}'), ("big", 2), ("big", 3), ("bad", b"")])
@example(messages=[("text", "")] * 7)  # with the reset, eight answers queued before the frame
async def test_a_stream_survives_any_sequence_of_messages(
    small_server: tuple[str, web.Application], messages: list[tuple[str, Any]]
) -> None:
    """Any mix of good frames, garbage, oversized frames and control text over one socket:
    each binary message gets exactly one reply, each text message its own answer in order,
    the stream stays open, and the next good frame gets a result."""
    url, app = small_server
    async with aiohttp.ClientSession() as http:
        ws, books = await open_stream(http, url)
        reader = asyncio.create_task(read_into(ws, books))
        kinds: list[str] = []
        want: list[str] = []
        periodic = False
        reset = ("text", '{"type":"config","max_frame_age_ms":null}')
        for kind, payload in [*at_most_two_big_in_a_row(messages), reset]:
            if kind == "text":
                answer, stats_on = expected_control(app, payload)
                want.append(answer)
                periodic |= stats_on
                await ws.send_str(payload)
            else:
                if kind == "good":
                    payload = GOOD
                elif kind == "big":
                    payload = GOOD + bytes(256 * 1024 - len(GOOD) + payload)
                books.sent_at[len(kinds)] = time.monotonic()
                kinds.append(kind)
                await ws.send_bytes(payload)
        await wait_until(
            lambda: set(books.replies) >= set(books.sent_at),
            deadline(frames=len(kinds)),
            lambda: f"replies to frames {books.unanswered()}",
        )
        # and every control message answered: replies the client has not read yet count
        # against max_pending_results, and past it a frame is dropped as `overload`
        skip = {"credit", "stats"} if periodic else {"credit"}
        answers = len([w for w in want if w not in skip])
        await wait_until(
            lambda: len([m for m in books.other if m["type"] not in skip]) >= answers,
            deadline(),
            lambda: f"{answers} answers to control messages, got {books.other}",
        )
        last = len(kinds)
        books.sent_at[last] = time.monotonic()
        await ws.send_bytes(GOOD)
        await wait_until(lambda: last in books.replies, deadline(), f"a reply to frame {last}")
        await ws.close()
        await asyncio.wait_for(reader, deadline())
    assert ws.close_code == 1000
    assert books.answered_twice() == [] and books.unanswered() == []
    assert books.replies[last][0]["type"] == "result", books.replies[last]
    for seq, kind in enumerate(kinds):
        reply = books.replies[seq][0]
        assert reply["type"] in ("result", "dropped", "error")
        if reply["type"] == "error":
            assert reply["code"] in CODES and kind != "good", reply
        if kind == "big" and reply["type"] == "error":
            assert reply["code"] == "bad_frame", reply
    got = [m["type"] if m["type"] != "error" else "error:" + m["code"] for m in books.other]
    assert [g for g in got if g not in skip] == [w for w in want if w not in skip]
