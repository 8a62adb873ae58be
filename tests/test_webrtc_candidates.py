"""Which addresses a WebRTC offer can make the gateway send connectivity checks to (issue #23).

Guards against an offer turning the gateway into a packet source aimed at any host and port
the client lists (a scan of the gateway's network, traffic at a third party) when
`webrtc_peer_addresses` says to check only the offer's own address."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from edge.transports.webrtc.candidates import allowed, restrict
from tests.conftest import running, settings_for
from tests.pace import deadline, wait_until
from tests.test_webrtc import offer_sdp, post_offer


def listener(host: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.setblocking(False)
    return s


def received(s: socket.socket) -> int:
    n = 0
    while True:
        try:
            s.recv(2048)
        except BlockingIOError:
            return n
        n += 1


def with_candidates(sdp: str, *where: tuple[str, int, int]) -> str:
    """`sdp` with only the candidates `where` (address, port, priority) in its first section."""
    lines = [line for line in sdp.splitlines() if not line.startswith("a=candidate:")]
    at = next(i for i, line in enumerate(lines) if line.startswith("a=ice-ufrag:"))
    added = [
        f"a=candidate:{n} 1 udp {priority} {host} {port} typ host"
        for n, (host, port, priority) in enumerate(where, 1)
    ]
    return "\r\n".join(lines[: at + 1] + added + lines[at + 1 :]) + "\r\n"


@pytest.mark.unit
def test_each_mode_keeps_the_candidates_it_names() -> None:
    assert allowed("8.8.8.8", "1.1.1.1", "any")
    assert not allowed("8.8.8.8", "1.1.1.1", "private")
    assert allowed("10.1.2.3", "1.1.1.1", "private")
    assert not allowed("10.1.2.3", "1.1.1.1", "source")
    assert allowed("1.1.1.1", "::ffff:1.1.1.1", "source")
    assert not allowed("host-1.local", "1.1.1.1", "private")
    sdp = "v=0\r\na=candidate:1 1 udp 1 10.0.0.1 9 typ host\r\na=mid:0\r\n"
    assert restrict(sdp, "10.0.0.1", "source") == sdp
    assert restrict(sdp, "10.0.0.2", "source") == "v=0\r\na=mid:0\r\n"


@pytest.mark.integration
async def test_an_offer_gets_checks_sent_only_to_its_own_address(face_repo: Path) -> None:
    """With webrtc_peer_addresses=source, an offer from 127.0.0.1 listing a candidate at
    127.0.0.1 and a higher-priority one at 127.0.0.2: the gateway's checks reach the first
    (so it is checking) and none ever reached the second, which it would have checked
    first. With `any` (the default) the second is checked: the test can see it."""
    own, other = listener("127.0.0.1"), listener("127.0.0.2")
    got = {"own": 0, "other": 0}

    def checked(want: str) -> bool:
        got["own"] += received(own)
        got["other"] += received(other)
        return got[want] > 0

    try:
        for mode in ("any", "source"):
            received(own), received(other)
            sdp = with_candidates(
                await offer_sdp(),
                ("127.0.0.2", other.getsockname()[1], 2130706431),
                ("127.0.0.1", own.getsockname()[1], 1),
            )
            settings = settings_for(face_repo, webrtc_peer_addresses=mode)
            async with running(settings) as (url, _):
                status, reply, _ = await post_offer(url, {"sdp": sdp, "type": "offer"})
                assert status == 200, reply
                got.update(own=0, other=0)
                if mode == "any":
                    await wait_until(lambda: checked("other"), deadline(), "no check sent")
                else:
                    await wait_until(lambda: checked("own"), deadline(), "no check sent")
                    checked("own")
                    assert got["other"] == 0, got
    finally:
        own.close()
        other.close()
