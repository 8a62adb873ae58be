"""Which of an offer's ICE candidates the gateway will send connectivity checks to.

An offer lists addresses; the gateway's ICE agent sends STUN checks to each of them. Left
alone, a client can make the gateway send packets to any host and port it names (a scan of
the gateway's own network, or traffic aimed at a third party). `webrtc_peer_addresses`
chooses which candidates stay in the offer before aiortc sees it:

- `any`: every candidate (clients behind TURN relays or with several public addresses);
- `private`: the address the offer came from, and private, loopback and link-local addresses
  (a gateway serving its own site);
- `source`: only candidates at the address the offer came from (a gateway on the internet
  whose clients reach it directly or through one NAT: their server-reflexive candidate is
  that address).

Candidates named by mDNS (`*.local`) cannot be checked and go unless the mode is `any`.
"""

from __future__ import annotations

import ipaddress

MODES = ("any", "private", "source")


def allowed(address: str, source: str | None, mode: str) -> bool:
    """Whether the gateway may send checks to `address`, for an offer from `source`."""
    if mode == "any":
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False  # an mDNS name or junk
    if source is not None and _same(ip, source):
        return True
    return mode == "private" and (ip.is_private or ip.is_loopback or ip.is_link_local)


def _same(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, source: str) -> bool:
    try:
        other = ipaddress.ip_address(source)
    except ValueError:
        return False
    if isinstance(other, ipaddress.IPv6Address) and other.ipv4_mapped is not None:
        other = other.ipv4_mapped
    return ip == other


def restrict(sdp: str, source: str | None, mode: str) -> str:
    """`sdp` without the candidate lines whose address the gateway may not check."""
    if mode == "any":
        return sdp
    kept = []
    for line in sdp.splitlines(keepends=True):
        if line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) < 6 or not allowed(fields[4], source, mode):
                continue
        kept.append(line)
    return "".join(kept)
