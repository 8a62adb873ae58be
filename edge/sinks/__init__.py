"""Result sinks: every result (and, if asked, every drop notice) also published to a broker.

A sink is named by a URL (`EDGE_SINKS`, `--sink`): `mqtt://[user:pass@]host:1883/edge`,
`mqtts://...`, `nats://host:4222/edge[?jetstream=1]`. The scheme picks the kind: a `Sink`
class (edge/sinks/base.py) found in `KINDS` or under the `edge.sinks` entry point group, so a
new kind is one module. Parsing and checking a URL imports the kind's module but not its
client library, so settings are validated without a broker or the library loaded.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from urllib.parse import parse_qsl, unquote, urlsplit

from edge.sinks.base import TOPIC, Sink, SinkConfigError, Target

#: built-in kinds, by URL scheme: "module:Class"
KINDS = {
    "mqtt": "edge.sinks.mqtt:MqttSink",
    "mqtts": "edge.sinks.mqtt:MqttSink",
    "nats": "edge.sinks.nats:NatsSink",
}
#: entry point group under which other packages add kinds (name: the scheme)
ENTRY_POINTS = "edge.sinks"

__all__ = ["KINDS", "Sink", "SinkConfigError", "Target", "kind", "parse", "parse_all", "schemes"]


def schemes() -> list[str]:
    plugins = importlib.metadata.entry_points(group=ENTRY_POINTS)
    return sorted(set(KINDS) | {ep.name for ep in plugins})


def kind(scheme: str) -> type[Sink]:
    """The Sink class for a URL scheme; KeyError if there is none."""
    ref = KINDS.get(scheme)
    if ref is None:
        found = importlib.metadata.entry_points(group=ENTRY_POINTS, name=scheme)
        if not found:
            raise KeyError(scheme)
        ref = next(iter(found)).value
    module, _, name = ref.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, Sink)):
        raise SinkConfigError(f"{ref} is not a Sink class (edge.sinks.base.Sink)")
    return cls


def parse(url: str) -> Target:
    """A sink URL taken apart and checked, or SinkConfigError naming the sink (never its
    password) and what to change."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:  # a port that is not a number, a broken [IPv6] host
        raise SinkConfigError(f"{_redact(url)}: not a URL ({e})") from None
    scheme = parts.scheme.lower()
    shown = _redact(url)
    try:
        cls = kind(scheme)
    except KeyError:
        raise SinkConfigError(
            f"{shown}: unknown scheme {scheme!r}; use one of {', '.join(schemes())}, "
            "or add a kind (docs/sinks.md)"
        ) from None
    if port is None and scheme not in cls.ports:
        raise SinkConfigError(f"{shown}: no port; write {scheme}://host:port/prefix")
    if parts.fragment:
        raise SinkConfigError(f"{shown}: a sink URL has no #fragment (and topics no wildcards)")
    if not parts.hostname:
        raise SinkConfigError(f"{shown}: no host; write {scheme}://host:port/prefix")
    if cls.requires and importlib.util.find_spec(cls.requires) is None:
        raise SinkConfigError(
            f"{shown}: {scheme} sinks need the {cls.requires} package; install the gateway "
            "with its `sinks` extra (pip install 'edge-gateway[sinks]')"
        )
    prefix = parts.path.strip("/") or "edge"
    if not TOPIC.fullmatch(prefix):
        raise SinkConfigError(
            f"{shown}: the path is the topic prefix: levels of letters, digits, - and _, "
            f"separated by / (no wildcards), e.g. /edge or /site-1/edge; got {parts.path!r}"
        )
    options: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key != "drops" and key not in cls.options:
            known = ", ".join(sorted({"drops", *cls.options}))
            raise SinkConfigError(f"{shown}: unknown option {key!r}; {scheme} takes {known}")
        options[key] = value
    drops = options.pop("drops", "0")
    if drops not in ("0", "1"):
        raise SinkConfigError(f"{shown}: drops must be 0 or 1")
    target = Target(
        scheme=scheme,
        host=parts.hostname,
        port=port or cls.ports[scheme],
        prefix=prefix,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        options=options,
        drops=drops == "1",
    )
    try:
        cls.check(target)
    except SinkConfigError as e:
        raise SinkConfigError(f"{target.label}: {e}") from None
    return target


def parse_all(urls: tuple[str, ...]) -> list[Target]:
    """Every sink of the settings; the same broker and prefix twice is an error."""
    targets = [parse(u) for u in urls]
    labels = [t.label for t in targets]
    for label in labels:
        if labels.count(label) > 1:
            raise SinkConfigError(f"{label}: named twice; give each sink its own prefix")
    return targets


def _redact(url: str) -> str:
    """The URL as it may be shown: no user information, no query."""
    head, sep, rest = url.strip().partition("://")
    if not sep:
        return head.split("@")[-1].split("?")[0]
    return head + "://" + rest.rpartition("@")[2].split("?")[0]
