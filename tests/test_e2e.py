"""The dashboard in a real browser: Debian's Chromium with a fake camera that shows a face photo,
against the real gateway. Asserts what a person at the page sees: a box on the face, figures
that move, a fallback that says so, a reconnect after the gateway restarts."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from PIL import Image, ImageDraw, ImageFont
from playwright.async_api import Browser, Page, Route
from playwright.async_api import TimeoutError as PlaywrightTimeout

from edge.inference.tracking import TRACK_COLOURS
from tests.conftest import free_port, running, settings_for, wait_ready
from tests.e2e_browser import (
    CAMERA_H,
    CAMERA_W,
    FACE_IN_CAMERA,
    camera_frame,
    chromium,
    publish,
    serving_on,
    write_y4m,
)
from tests.pace import deadline
from tests.test_tracking import face

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"

# One snapshot of the page, taken in one task of the page so the figures and the overlay agree.
SNAPSHOT = """() => {
  const el = (id) => document.getElementById(id);
  const value = (id) => el(id).dataset.value;
  const overlay = el('overlay');
  const boxes = JSON.parse(overlay.dataset.boxes || '[]');
  const colours = JSON.parse(overlay.dataset.colours || '[]');
  const dpr = overlay.width / Math.max(1, overlay.clientWidth);
  const ctx = overlay.getContext('2d');
  const alpha = (x, y) =>
    ctx.getImageData(Math.round(x * dpr), Math.round(y * dpr), 1, 1).data[3];
  const [x1, y1, x2, y2] = boxes[0] || [0, 0, 0, 0];
  const video = el('video');
  return {
    last: window.edgeLast || null,
    boxes,
    colours,
    alphaOnEdge: alpha((x1 + x2) / 2, y1 + 1),
    alphaMirrored: alpha(overlay.clientWidth - (x1 + x2) / 2, (y1 + y2) / 2),
    video: [video.clientWidth, video.clientHeight, video.videoWidth, video.videoHeight],
    state: el('state').dataset.state,
    stateText: el('state').textContent,
    transport: el('transport').textContent,
    fallback: el('transport').dataset.fallback,
    notice: el('notice').hidden ? '' : el('notice').textContent,
    model: el('model').textContent,
    sent: Number(value('stat-sent')),
    results: Number(value('stat-results')),
    p50: value('stat-latency-p50'),
    p95: value('stat-latency-p95'),
    dropped: Number(value('stat-dropped')),
    errors: Number(value('stat-errors')),
    pageAgeMs: performance.now(),
  };
}"""

SHOWS_FACE = """(transport) => {
  const el = (id) => document.getElementById(id);
  return window.edgeLast && window.edgeLast.detections && window.edgeLast.detections.length > 0
    && el('transport').textContent.startsWith(transport)
    && Number(el('stat-results').dataset.value) > 0
    && Number(el('stat-sent').dataset.value) > 0
    && el('stat-latency-p50').dataset.value !== ''
    && JSON.parse(el('overlay').dataset.boxes || '[]').length > 0;
}"""


#: the colour of a face without a track ID (edge/web/app.js)
UNTRACKED_FACE = "#3fb950"


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="session")
def y4m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_y4m(tmp_path_factory.mktemp("camera") / "astronaut.y4m", camera_frame())


@pytest.fixture
async def browser(y4m: Path) -> AsyncIterator[Browser]:
    async with chromium(y4m) as b:
        yield b


async def open_page(browser: Browser, url: str, errors: list[str]) -> Page:
    context = await browser.new_context(viewport={"width": 1280, "height": 720})
    page = await context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(url)
    return page


def wait_ms(frames: int = 30) -> float:
    """How long to wait for the page: a browser starting, a camera, a connection, then
    `frames` frames, on this machine however busy (tests/pace.py)."""
    return 1000 * (15.0 + deadline(frames))


async def shows_face(page: Page, transport: str) -> dict[str, Any]:
    """Wait until the page draws a face result that came over `transport` and its figures
    moved; return a snapshot. On a timeout, fail with what the page shows instead."""
    within = wait_ms()
    try:
        await page.wait_for_function(SHOWS_FACE, arg=transport, timeout=within)
    except PlaywrightTimeout:
        snap = await page.evaluate(SNAPSHOT)
        snap.pop("last", None)
        pytest.fail(
            f"no face result over {transport} within {within:.0f} ms; the page shows {snap}"
        )
    snap: dict[str, Any] = await page.evaluate(SNAPSHOT)
    return snap


def check_face(snap: dict[str, Any]) -> None:
    """The result's box is on the face, and the overlay draws it there on the video."""
    last = snap["last"]
    assert last["type"] == "result" and last["model"] == "blazeface@1"
    assert snap["model"] == "blazeface@1"
    sx, sy = CAMERA_W / last["width"], CAMERA_H / last["height"]
    x1, y1, x2, y2 = last["detections"][0]["box"]
    box = (x1 * sx, y1 * sy, x2 * sx, y2 * sy)
    assert iou(box, FACE_IN_CAMERA) > 0.6, (box, FACE_IN_CAMERA)
    # where FACE_IN_CAMERA lands in the displayed video (object-fit: contain)
    cw, ch, vw, vh = snap["video"]
    assert (vw, vh) == (CAMERA_W, CAMERA_H)
    scale = min(cw / vw, ch / vh)
    ox, oy = (cw - vw * scale) / 2, (ch - vh * scale) / 2
    expected = [ox + FACE_IN_CAMERA[0] * scale, oy + FACE_IN_CAMERA[1] * scale,
                ox + FACE_IN_CAMERA[2] * scale, oy + FACE_IN_CAMERA[3] * scale]  # fmt: skip
    assert iou(snap["boxes"][0], expected) > 0.6, (snap["boxes"][0], expected)
    assert snap["alphaOnEdge"] > 0, "the overlay has no stroke on the box it says it drew"
    assert snap["colours"][0] == UNTRACKED_FACE, "an untracked face is not in its usual colour"
    assert snap["alphaMirrored"] == 0, "the overlay is painted where there is no face"


def check_figures(snap: dict[str, Any]) -> None:
    assert snap["state"] == "open", snap["stateText"]
    assert snap["results"] > 0 and snap["sent"] > 0
    p50, p95 = float(snap["p50"]), float(snap["p95"])
    # in milliseconds, and no frame is older than the page that sent it
    assert 0 < p50 <= p95 < snap["pageAgeMs"], (p50, p95, snap["pageAgeMs"])
    assert snap["errors"] == 0


def webrtc_routed(app: web.Application) -> None:
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource}
    if ("POST", "/v1/webrtc/offer") not in routes:
        pytest.fail(
            "POST /v1/webrtc/offer is not routed: edge/transports/webrtc/offer.py is missing or "
            "not "
            "added to edge/process/app.py, so the dashboard cannot use WebRTC"
        )


async def test_websocket_dashboard_boxes_the_face(face_repo: Path, browser: Browser) -> None:
    """Guards against a dashboard that streams but draws nothing, or draws boxes in the wrong
    place (result pixels not scaled to the displayed video), or whose figures never move."""
    errors: list[str] = []
    async with running(settings_for(face_repo)) as (url, _):
        page = await open_page(browser, url + "/?transport=websocket", errors)
        snap = await shows_face(page, "websocket")
        check_face(snap)
        check_figures(snap)
        assert snap["fallback"] == "false" and snap["notice"] == ""
        await page.wait_for_timeout(2500)  # a full rate window, so the picture shows steady rates
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "dashboard-websocket.png"
        await page.screenshot(path=str(shot))
        publish(shot, ROOT / "docs" / "dashboard.png")

        # a phone: one column, nothing wider than the screen, boxes still on the face
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.evaluate("window.edgeLast = null")  # a result drawn at the new size
        snap = await shows_face(page, "websocket")
        check_face(snap)
        layout = await page.evaluate("""() => ({
          overflow: document.documentElement.scrollWidth - window.innerWidth,
          stageBottom: document.querySelector('.stage').getBoundingClientRect().bottom,
          asideTop: document.querySelector('aside').getBoundingClientRect().top,
        })""")
        assert layout["overflow"] <= 0 and layout["stageBottom"] <= layout["asideTop"], layout
        await page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
    assert errors == []


async def test_webrtc_dashboard_boxes_the_face(face_repo: Path, browser: Browser) -> None:
    """Guards against the WebRTC path (camera track in, DataChannel results out) not reaching
    the page, or silently falling back to WebSocket."""
    errors: list[str] = []
    async with running(settings_for(face_repo)) as (url, app):
        webrtc_routed(app)
        # ICE and DTLS on a slow or busy machine can take longer than the page's 5 s: give
        # them the time this machine needs, so the test sees WebRTC and not its fallback
        ice_ms = int(1000 * deadline(30))
        page = await open_page(browser, url + f"/?transport=webrtc&ice_timeout_ms={ice_ms}", errors)
        snap = await shows_face(page, "webrtc")
        check_face(snap)
        check_figures(snap)
        assert snap["fallback"] == "false" and snap["notice"] == "", snap["notice"]
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "dashboard-webrtc.png"))
    assert errors == []


def without_candidates(sdp: str) -> str:
    return "".join(
        line for line in sdp.splitlines(keepends=True) if not line.startswith("a=candidate")
    )


@pytest.mark.parametrize("failure", ["offer_refused", "ice_never_connects"])
async def test_webrtc_falls_back_to_websocket(
    face_repo: Path, browser: Browser, failure: str
) -> None:
    """Guards against a page that stays dark when WebRTC cannot connect (a proxy that refuses
    the offer, UDP blocked so ICE never completes) instead of falling back and saying so."""

    async def refuse(route: Route) -> None:
        body = {"error": "injected", "message": "refused by the test"}
        await route.fulfill(status=500, content_type="application/json", body=json.dumps(body))

    async def hide_candidates(route: Route) -> None:
        # Neither side learns an address of the other, so ICE has nothing to try.
        offer = route.request.post_data_json
        offer["sdp"] = without_candidates(offer["sdp"])
        response = await route.fetch(post_data=json.dumps(offer))
        answer = await response.json()
        if "sdp" in answer:
            answer["sdp"] = without_candidates(answer["sdp"])
        await route.fulfill(response=response, body=json.dumps(answer))

    errors: list[str] = []
    async with running(settings_for(face_repo)) as (url, app):
        if failure == "ice_never_connects":
            webrtc_routed(app)
        context = await browser.new_context(viewport={"width": 1280, "height": 720})
        page = await context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.route(
            "**/v1/webrtc/offer", refuse if failure == "offer_refused" else hide_candidates
        )
        await page.goto(url + "/?transport=webrtc")
        snap = await shows_face(page, "websocket")
        check_face(snap)
        assert snap["fallback"] == "true"
        assert "fell back to WebSocket" in snap["notice"], snap["notice"]
        expected = "500" if failure == "offer_refused" else "not connected within 5 s"
        assert expected in snap["notice"], snap["notice"]
    assert errors == []


async def test_reconnects_after_the_gateway_restarts(face_repo: Path, browser: Browser) -> None:
    """Guards against a page that stays disconnected after a gateway drain (goaway, close
    1001) and restart, or that hammers the gateway instead of backing off."""
    port = free_port()
    settings = settings_for(face_repo, drain_seconds=2.0)
    errors: list[str] = []
    async with serving_on(settings, port):
        page = await open_page(browser, f"http://127.0.0.1:{port}/", errors)
        await shows_face(page, "websocket")
    # the first gateway drained: it sent goaway and closed with 1001
    await page.wait_for_function(
        "document.getElementById('state').dataset.state === 'reconnecting'", timeout=wait_ms(0)
    )
    snap = await page.evaluate(SNAPSHOT)
    assert "going away" in snap["stateText"] and "1001" in snap["stateText"], snap["stateText"]
    await page.evaluate("window.edgeLast = null")
    async with serving_on(settings, port):
        snap = await shows_face(page, "websocket")
        check_face(snap)
        assert snap["state"] == "open"
    assert errors == []


async def test_dashboard_on_a_multi_process_gateway(
    spawn_gateway: Any, face_repo: Path, browser: Browser
) -> None:
    """Guards against a dashboard that works against one process only: its page, scripts,
    WebSocket and WebRTC offer each reach whichever serving process takes the connection."""
    gw = spawn_gateway(face_repo, {"EDGE_PROCESSES": "2"})
    await wait_ready(gw.url)
    errors: list[str] = []
    for transport in ("websocket", "webrtc"):
        page = await open_page(browser, f"{gw.url}/?transport={transport}", errors)
        snap = await shows_face(page, transport)
        check_face(snap)
        assert snap["fallback"] == "false", snap["notice"]
        await page.context.close()
    assert errors == []


NO_CAMERA_VIEW = """() => {
  const el = (id) => document.getElementById(id);
  return {
    state: el('state').dataset.state,
    models: [...el('model-select').options].map((o) => o.value),
    button: el('toggle').textContent,
    notice: el('notice').hidden ? '' : el('notice').textContent,
  };
}"""


async def test_without_a_camera_the_page_offers_the_models_and_start(face_repo: Path) -> None:
    """Guards against a dashboard that, with no camera (none there, or not allowed), shows an
    empty model list, a Stop button for a stream that never started, nothing on how to get
    the camera going, or a 404 for its icon; pressing Start asks again and says so again."""
    errors: list[str] = []
    failed: list[str] = []
    async with running(settings_for(face_repo)) as (url, _), chromium(None) as browser:
        page = await (await browser.new_context()).new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on(
            "response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None
        )
        await page.goto(url + "/")
        said_so = "document.getElementById('state').dataset.state === 'error'"
        await page.wait_for_function(said_so, timeout=wait_ms(0))
        view = await page.evaluate(NO_CAMERA_VIEW)
        await page.evaluate("document.getElementById('notice').hidden = true")
        await page.click("#toggle")
        await page.wait_for_function(
            "!document.getElementById('notice').hidden", timeout=wait_ms(0)
        )
        again = await page.evaluate(NO_CAMERA_VIEW)
        icon = await page.request.get(url + "/favicon.ico")
        assert icon.status == 200 and "svg" in icon.headers["content-type"], icon.status
    assert view["models"] == ["blazeface"] and view["button"] == "Start", view
    assert "camera" in view["notice"].lower() and "press Start" in view["notice"], view
    assert again == view
    assert failed == [] and errors == []


TWO_TRACKS_DRAWN = """() => {
  const overlay = document.getElementById('overlay');
  const ids = (window.edgeLast?.detections ?? []).map((d) => d.track_id);
  const colours = JSON.parse(overlay.dataset.colours || '[]');
  const labels = JSON.parse(overlay.dataset.labels || '[]');
  return ids.length === 2 && new Set(ids).size === 2 && colours.length === 2
    ? { ids, colours, labels } : null;
}"""


async def test_tracked_faces_are_drawn_in_their_tracks_colours(
    tracked_repo: Path, tmp_path: Path
) -> None:
    """Guards against the dashboard drawing every track in one colour (or in a colour other
    than `edge stream --annotate` gives the same track), or leaving the ID out of the label:
    a camera showing two faces, a tracked model, two track IDs, two colours."""
    picture = np.full((CAMERA_H, CAMERA_W, 3), 96, np.uint8)
    f = face()
    for x in (60, 420):
        picture[150 : 150 + f.shape[0], x : x + f.shape[1]] = f
    errors: list[str] = []
    async with (
        running(settings_for(tracked_repo)) as (url, _),
        chromium(write_y4m(tmp_path / "two-faces.y4m", picture)) as browser,
    ):
        page = await open_page(browser, url + "/?transport=websocket&model=faces", errors)
        try:
            handle = await page.wait_for_function(TWO_TRACKS_DRAWN, timeout=wait_ms())
        except PlaywrightTimeout:
            snap = await page.evaluate(SNAPSHOT)
            pytest.fail(f"two tracked faces not drawn within {wait_ms():.0f} ms: {snap}")
        drawn = await handle.json_value()
    ids, colours, labels = drawn["ids"], drawn["colours"], drawn["labels"]
    assert colours == [TRACK_COLOURS[i % len(TRACK_COLOURS)] for i in ids], drawn
    assert len(set(colours)) == 2 and UNTRACKED_FACE not in colours, drawn
    assert [label.split()[:2] for label in labels] == [["face", f"#{i}"] for i in ids], drawn
    assert errors == []


TEXTS_DRAWN = """() => {
  const overlay = document.getElementById('overlay');
  const texts = JSON.parse(overlay.dataset.texts || '[]');
  if (!texts.length) return null;
  const dpr = overlay.width / Math.max(1, overlay.clientWidth);
  const ctx = overlay.getContext('2d');
  const alpha = (x, y) =>
    ctx.getImageData(Math.round(x * dpr), Math.round(y * dpr), 1, 1).data[3];
  return {
    read: (window.edgeLast?.detections ?? []).map((d) => d.text),
    texts,
    boxes: JSON.parse(overlay.dataset.boxes || '[]'),
    plates: texts.map(([, x, y]) => alpha(x + 2, y + 9)),
  };
}"""


@pytest.mark.timeout(180)  # the OCR model loads and runs far slower than BlazeFace
async def test_read_text_is_drawn_under_its_box(pulled: Path, tmp_path: Path) -> None:
    """Guards against the dashboard leaving out what a reading model (`ocr`) read, or drawing
    it anywhere but under the box it was read in: a camera showing printed lines, the OCR
    model, each line's text on the overlay right below its box."""
    lines = ["Hello World 42", "edge gateway"]
    page = Image.new("RGB", (CAMERA_W, CAMERA_H), "white")
    pen = ImageDraw.Draw(page)
    for i, text in enumerate(lines):
        pen.text((60, 80 + 160 * i), text, fill="black", font=ImageFont.load_default(size=44))
    repo = tmp_path / "repo"
    shutil.copytree(pulled / "ocr", repo / "ocr")
    errors: list[str] = []
    async with (
        running(settings_for(repo)) as (url, _),
        chromium(write_y4m(tmp_path / "text.y4m", np.asarray(page))) as browser,
    ):
        page_ = await open_page(browser, url + "/?transport=websocket&model=ocr", errors)
        within = wait_ms() + 1000 * deadline(30, model="ppocr_det")
        try:
            handle = await page_.wait_for_function(TEXTS_DRAWN, timeout=within)
        except PlaywrightTimeout:
            snap = await page_.evaluate(SNAPSHOT)
            pytest.fail(f"no text drawn within {within:.0f} ms: {snap}")
        drawn = await handle.json_value()
    texts, boxes = drawn["texts"], drawn["boxes"]
    assert sorted(t for t, _, _ in texts) == sorted(t for t in drawn["read"] if t), drawn
    assert any(t == "Hello World 42" for t, _, _ in texts), drawn  # what was printed
    for (_, x, y), (x1, _, _, y2) in zip(texts, boxes, strict=False):
        assert abs(x - x1) <= 1 and 0 <= y - y2 <= 5, drawn  # right under its box
    assert all(a > 0 for a in drawn["plates"]), "the overlay has no plate where it says"
    assert errors == []
