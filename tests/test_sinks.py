"""Result sinks (docs/sinks.md): every result also published to MQTT and NATS, as the brokers'
subscribers see it, with the brokers real (mosquitto, nats-server on loopback ports), stopped,
restarted, refusing credentials, or replaced by a socket that never reads."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from edge import codec
from edge.codec import ProtocolError
from edge.metrics import Metrics
from edge.settings import Settings, SettingsError
from edge.sinks import KINDS, SinkConfigError, parse, parse_all
from edge.sinks import runner as sink_runner
from edge.sinks.base import Outgoing, Sink
from edge.sinks.runner import Item, SinkRunner, backoff
from tests.conftest import GatewayProcess, free_port, jpeg, running, settings_for, wait_ready
from tests.operations_util import scrape, total
from tests.pace import deadline
from tests.sinks_util import (
    Broker,
    lockstep,
    mosquitto,
    mqtt_messages,
    nats_messages,
    nats_server,
    published,
    socket_results,
    until,
)
from tests.test_overload import NO_RATE_LIMITS
from tests.tls_util import make_tls
from tests.wsclient import Books, next_reply, open_stream, read_into

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "sink-test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """Real photos: a face, a cat, a man with a camera, a cup of coffee."""
    return [jpeg(n) for n in ("astronaut.png", "chelsea.png", "camera.png", "coffee.png")]


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Start brokers of the test's own; every one is stopped at the end, whatever happened."""
    started: list[Broker] = []

    def start(broker: Broker) -> Broker:
        broker.start()
        started.append(broker)
        return broker

    yield start
    for b in started:
        b.stop()


# -- units ------------------------------------------------------------------------------------
@pytest.mark.unit
def test_sink_urls_parse_and_bad_ones_say_how_to_fix_without_the_password() -> None:
    """A sink URL taken wrongly publishes nowhere (or somewhere else); an error that prints the
    password leaks it into every log that keeps start-up errors."""
    t = parse("mqtt://cam:s3cret%21@broker.local/site-1/edge?qos=1&retain=1&drops=1")
    assert (t.scheme, t.host, t.port, t.prefix) == ("mqtt", "broker.local", 1883, "site-1/edge")
    assert (t.user, t.password, t.drops) == ("cam", "s3cret!", True)
    assert dict(t.options) == {"qos": "1", "retain": "1"}
    assert t.label == "mqtt://broker.local:1883/site-1/edge" and "s3cret" not in repr(t)
    assert parse("mqtts://h").port == 8883 and parse("mqtts://h").prefix == "edge"
    n = parse("nats://h:4333/edge?jetstream=1")
    assert (n.port, n.flag("jetstream"), n.drops) == (4333, True, False)
    bad = {
        "kafka://u:hunter2@h:9092/edge": "unknown scheme 'kafka'; use one of mqtt, mqtts, nats",
        "mqtt://u:hunter2@h/edge?qos=2": "qos must be 0 or 1",
        "mqtt://u:hunter2@h/edge?qos": "qos needs a value",
        "mqtt://u:hunter2@h/edge?topic=x": "unknown option 'topic'; mqtt takes",
        "nats://u:hunter2@h/edge?jetstream=yes": "jetstream must be 0 or 1",
        "mqtt://u:hunter2@h/edge/+": "the path is the topic prefix",
        "nats://u:hunter2@h/a//b": "the path is the topic prefix",
        "mqtt://u:hunter2@h:port/edge": "not a URL",
        "mqtt:///edge": "no host",
        "mqtt://u:hunter2@h/edge#x": "no #fragment",
        "mqtt://u:hunter2@h/edge?ca=/nonexistent": "only for mqtts",
    }
    for url, message in bad.items():
        with pytest.raises(SinkConfigError) as e:
            parse(url)
        assert message in str(e.value) and "hunter2" not in str(e.value), url
    with pytest.raises(SinkConfigError, match="named twice"):
        parse_all(("nats://h/edge", "nats://h:4222/edge?jetstream=1"))
    with pytest.raises(SettingsError) as s:
        Settings.from_sources(env={"EDGE_SINKS": "nats://h/edge,mqtt://u:hunter2@h/edge?qos=3"})
    assert str(s.value).startswith("sinks: mqtt://h:1883/edge: qos") and "hunter2" not in str(s)
    good = Settings.from_sources(env={"EDGE_SINKS": "mqtt://u:hunter2@h/edge,nats://h/edge"})
    assert len(good.sinks) == 2 and "hunter2" not in repr(good)


@pytest.mark.unit
def test_a_streams_publish_and_topic_are_validated_like_every_control_field() -> None:
    """A topic with a wildcard would publish where other streams' subscribers listen, or be
    refused by the broker, losing every result of the stream."""
    cfg = codec.parse_control('{"type":"config","publish":false,"topic":"site-1/door_3"}', 4096)
    assert cfg.config is not None
    assert (cfg.config.publish, cfg.config.topic, cfg.config.clear_topic) == (
        False,
        "site-1/door_3",
        False,
    )
    reset = codec.parse_control('{"type":"config","topic":null}', 4096).config
    assert reset is not None and reset.topic is None and reset.clear_topic
    for bad in ['"#"', '"a/+"', '"door.*"', '">"', '"/door"', '"door/"', '"a//b"', '""',
                '"d\\u00f6r"', '"a b"', f'"{"x" * 65}"', "3", "true", '["a"]']:  # fmt: skip
        with pytest.raises(ProtocolError, match="topic must be"):
            codec.parse_control(f'{{"type":"config","topic":{bad}}}', 4096)
    for bad in ['"yes"', "1", "null"]:
        if bad == "null":  # null is "leave as it is", as for every other key
            assert codec.parse_control('{"type":"config","publish":null}', 4096).config
            continue
        with pytest.raises(ProtocolError, match="publish must be true or false"):
            codec.parse_control(f'{{"type":"config","publish":{bad}}}', 4096)


@pytest.mark.unit
def test_payload_carries_the_streams_identity_and_the_sockets_result_verbatim() -> None:
    """Consumers key on session and seq and read the reply as the socket had it."""
    text = codec.message("result", seq=7, model="m@2", detections=[{"label": "face"}])
    item = Item("result", "s1", "m", "m@2", "door-3", 7, 1700000000.25, 1700000000.5, text)
    msg = json.loads(item.payload())
    assert msg == {"session": "s1", "model": "m@2", "seq": 7, "received_at": 1700000000.25,
                   "answered_at": 1700000000.5, "reply": json.loads(text)}  # fmt: skip
    drop = json.loads(Item("dropped", "s1", "m", "", "s1", 8, None, 1.0, "stale").payload())
    assert drop["model"] == "m" and drop["received_at"] is None
    assert drop["reply"] == {"type": "dropped", "seq": 8, "reason": "stale"}


@pytest.mark.unit
def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    """Without a cap a sink stays away for hours after a long outage; without jitter every
    process of every gateway reconnects at the same instant."""
    for attempt, ceiling in ((1, 0.5), (2, 1.0), (4, 4.0), (9, 30.0), (80, 30.0)):
        waits = {backoff(attempt, 30.0) for _ in range(50)}
        assert all(ceiling / 2 <= w <= ceiling for w in waits) and len(waits) > 1


class FakeSink(Sink):
    """A kind added the way a plugin adds one: one class. Fails to connect `fail` times,
    then records every batch; `stall` makes publishing hang."""

    separator = "."
    ports = {"fake": 1}
    fail = 0
    stall = False
    batches: list[list[Outgoing]] = []

    async def connect(self) -> None:
        if FakeSink.fail:
            FakeSink.fail -= 1
            raise ConnectionRefusedError("refused")

    async def publish(self, batch: Any) -> None:
        if FakeSink.stall:
            await asyncio.Event().wait()
        FakeSink.batches.append(list(batch))

    async def close(self) -> None:
        pass


def _item(seq: int) -> Item:
    return Item("result", "s1", "blazeface", "blazeface@1", "site/door-3", seq, 1.0, 2.0, "{}")


@pytest.mark.unit
async def test_a_plugin_kind_reconnects_with_backoff_and_a_full_queue_drops_its_oldest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Guards the owner's contract: `offer` never waits; a full queue loses the oldest,
    counted; a refused connect is retried; what is queued goes out in order, topics in the
    kind's own separators; a stalled publish costs its batch, counted, and a reconnect."""
    monkeypatch.setitem(KINDS, "fake", "tests.test_sinks:FakeSink")
    monkeypatch.setattr(sink_runner, "FIRST_RETRY_S", 0.01)
    monkeypatch.setattr(FakeSink, "fail", 2)
    monkeypatch.setattr(FakeSink, "batches", [])
    target = parse("fake://h/edge")
    metrics = Metrics()
    r = SinkRunner(FakeSink(target, timeout=0.5, name="t"), metrics, capacity=4, retry_max_s=1)

    def count(name: str, **labels: str) -> float:
        value = metrics.registry.get_sample_value(name, {"sink": "fake://h:1/edge", **labels})
        return value or 0.0

    for seq in range(10):  # before the task runs at all: nothing may wait
        r.offer(_item(seq))
    assert r.queued == 4 and count("edge_sink_dropped_total", reason="queue_full") == 6
    r.start()
    try:
        await until(lambda: len(FakeSink.batches) == 1, 10, "the queue published")
        topics = [t for t, _ in FakeSink.batches[0]]
        assert topics == ["edge.results.blazeface.site.door-3"] * 4
        assert [json.loads(p)["seq"] for _, p in FakeSink.batches[0]] == [6, 7, 8, 9]
        assert count("edge_sink_connected") == 1 and count("edge_sink_published_total") == 4
        FakeSink.stall = True
        r.offer(_item(10))
        await until(lambda: count("edge_sink_dropped_total", reason="publish_failed") == 1, 10,
                    "the stalled batch counted")  # fmt: skip
        FakeSink.stall = False
        r.offer(_item(11))
        await until(lambda: len(FakeSink.batches) == 2, 10, "publishing after the reconnect")
        assert [json.loads(p)["seq"] for _, p in FakeSink.batches[1]] == [11]
    finally:
        FakeSink.stall = False
        await r.stop(0.5)
    assert count("edge_sink_connected") == 0


# -- the real gateway, the real brokers --------------------------------------------------------
def sink_settings(repo: Path, *urls: str, **overrides: Any) -> Settings:
    return settings_for(
        repo,
        sinks=urls,
        sink_retry_max_s=1.0,
        sink_timeout_s=2.0,
        max_fps_per_stream=0,  # lockstep clients may outrun the default 120 fps
        max_fps_per_client=0,
        **overrides,
    )


async def configure(ws: aiohttp.ClientWebSocketResponse, **fields: Any) -> dict[str, Any]:
    await ws.send_str(json.dumps({"type": "config", **fields}))
    answer = await next_reply(ws)
    assert answer["type"] == "config", answer
    return answer


@pytest.mark.integration
async def test_subscribers_receive_exactly_the_results_the_sockets_received(
    brokers: Callable[..., Broker], tmp_path: Path, face_repo: Path, photos: list[bytes]
) -> None:
    """The issue's core: streams of real photos with MQTT (QoS 1), NATS and NATS JetStream
    sinks on; each subscriber gets one message per result, the same seqs and the same JSON
    as the socket, on the stream's topic; a stream that opts out publishes nothing; no token
    travels; MQTT's retain flag leaves each stream's last result for a later subscriber."""
    mq = brokers(mosquitto(tmp_path))
    ns = brokers(nats_server(tmp_path, jetstream=True))
    nc = await nats.connect(f"nats://127.0.0.1:{ns.port}")
    js = nc.jetstream()
    await js.add_stream(name="EDGE_JS", subjects=["js.>"])
    settings = sink_settings(
        face_repo,
        f"mqtt://127.0.0.1:{mq.port}/edge?qos=1&retain=1",
        f"nats://127.0.0.1:{ns.port}/edge",
        f"nats://127.0.0.1:{ns.port}/js?jetstream=1",
        auth_tokens=(TOKEN,),
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with (
            mqtt_messages(mq.port) as by_mqtt,
            nats_messages(ns.port) as by_nats,
            running(settings) as (url, _),
            aiohttp.ClientSession() as http,
        ):
            clients = [await open_stream(http, url, headers=auth) for _ in range(3)]
            (_, plain), (door, named), (quiet, _) = clients
            assert (await configure(door, topic="door-3"))["topic"] == "door-3"
            answer = await configure(quiet, publish=False)
            assert answer["publish"] is False and answer["topic"] == clients[2][1].hello["session"]
            await asyncio.gather(*(lockstep(ws, b, photos, lambda s: s >= 12) for ws, b in clients))
            expected = socket_results(clients[:2])
            faces = {len(m[0]["detections"]) for m in plain.replies.values()}
            assert len(expected) == 24 and 0 in faces and max(faces) > 0, faces
            await until(lambda: len(by_mqtt) >= 24 and len(by_nats) >= 24, 30, "24 messages each")
            for _ in range(1500):  # a safety net of 30 s, not a speed check
                if (await js.stream_info("EDGE_JS")).state.messages >= 24:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)  # a message too many would arrive now
            metrics = await _scrape(url)
        count = (await js.stream_info("EDGE_JS")).state.messages
        stored = [await js.get_msg("EDGE_JS", n) for n in range(1, count + 1)]
        async with mqtt_messages(mq.port) as retained:  # the gateway has gone meanwhile
            await until(lambda: len(retained) >= 2, 30, "a retained result per stream")
    finally:
        await nc.close()
    last = {(m["session"], m["seq"]) for _, m in retained}
    assert last == {(b.hello["session"], 11) for b in (plain, named)}
    by_js = [(m.subject, json.loads(m.data or b"")) for m in stored]
    for got, sep in ((by_mqtt, "/"), (by_nats, "."), (by_js, ".")):
        assert published(got) == expected
        head = "js" if got is by_js else "edge"
        for topic, msg in got:
            suffix = "door-3" if msg["session"] == named.hello["session"] else msg["session"]
            assert topic == sep.join((head, "results", "blazeface", suffix))
            assert msg["model"] == "blazeface@1" and msg["received_at"] <= msg["answered_at"]
            assert TOKEN not in json.dumps(msg)
    for sink in (f"mqtt://127.0.0.1:{mq.port}/edge", f"nats://127.0.0.1:{ns.port}/js"):
        assert total(metrics, "edge_sink_published_total", sink=sink) == 24
        assert total(metrics, "edge_sink_connected", sink=sink) == 1
        assert total(metrics, "edge_sink_dropped_total", sink=sink) == 0


@pytest.mark.integration
async def test_drop_notices_are_published_when_a_sink_asks_for_them(
    brokers: Callable[..., Broker], tmp_path: Path, face_repo: Path, face_jpeg: bytes
) -> None:
    """`?drops=1`: every drop notice the socket got is published too, one message per seq
    under `dropped`, and the results still under `results`; a sink without it gets results."""
    ns = brokers(nats_server(tmp_path))
    settings = sink_settings(
        face_repo,
        f"nats://127.0.0.1:{ns.port}/edge?drops=1",
        f"nats://127.0.0.1:{ns.port}/plain",
    )
    async with (
        nats_messages(ns.port, "edge.>") as with_drops,
        nats_messages(ns.port, "plain.>") as without,
        running(settings) as (url, _),
        aiohttp.ClientSession() as http,
    ):
        ws, books = await open_stream(http, url)
        reader = asyncio.create_task(read_into(ws, books))
        for seq in range(40):  # back to back: most are superseded before their turn
            books.sent_at[seq] = 0.0
            await ws.send_bytes(face_jpeg)
        await until(lambda: not books.unanswered(), 60, "a reply to every frame")
        results = socket_results([(ws, books)])
        await until(lambda: len(with_drops) >= 40, 30, "a message per frame")
        await until(lambda: len(without) >= len(results), 30, "a message per result")
        await ws.close()
        await reader
    session = books.hello["session"]
    dropped = {s: m[0]["reason"] for s, m in books.replies.items() if m[0]["type"] == "dropped"}
    assert dropped, books.kinds()
    assert {(t, m["seq"]): m["reply"]["reason"] for t, m in with_drops if "dropped" in t} == {
        (f"edge.dropped.blazeface.{session}", s): r for s, r in dropped.items()
    }
    assert published([(t, m) for t, m in with_drops if "results" in t]) == results
    assert published(without) == results


@pytest.mark.integration
async def test_mqtts_publishes_over_tls_trusting_the_given_ca(
    brokers: Callable[..., Broker], tmp_path: Path, face_repo: Path, photos: list[bytes]
) -> None:
    """`mqtts://` with `ca=`: the sink verifies the broker's certificate and publishes."""
    ca, cert, key = make_tls(tmp_path)
    mq = brokers(mosquitto(tmp_path, tls=(cert, key)))
    trust = ssl.create_default_context(cafile=str(ca))
    settings = sink_settings(face_repo, f"mqtts://127.0.0.1:{mq.port}/edge?ca={ca}")
    async with (
        mqtt_messages(mq.port, tls=trust) as got,
        running(settings) as (url, _),
        aiohttp.ClientSession() as http,
    ):
        ws, books = await open_stream(http, url)
        await lockstep(ws, books, photos, lambda s: s >= 4)
        await until(lambda: len(got) >= 4, 30, "4 messages over TLS")
    assert published(got) == socket_results([(ws, books)])


async def streams_on_both(
    http: aiohttp.ClientSession, url: str
) -> list[tuple[aiohttp.ClientWebSocketResponse, Books]]:
    """At least 4 streams, and more until both serving processes hold some: the supervisor
    hands none to a process whose loop lags, as one may for a moment on a loaded machine."""
    clients: list[tuple[aiohttp.ClientWebSocketResponse, Books]] = []
    for _ in range(40):  # a safety net: a process lags for seconds at most
        if len(clients) >= 4 and {b.hello["process"] for _, b in clients} == {0, 1}:
            return clients
        clients.append(await open_stream(http, url))
        if len(clients) >= 4:
            await asyncio.sleep(0.5)
    raise AssertionError(f"streams not spread: {[b.hello['process'] for _, b in clients]}")


async def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    async with aiohttp.ClientSession() as http:
        return await scrape(http, url)


@pytest.mark.integration
async def test_a_stopped_broker_costs_the_streams_nothing_and_publishing_resumes(
    brokers: Callable[..., Broker], tmp_path: Path, face_repo: Path, photos: list[bytes]
) -> None:
    """Both brokers stop mid-stream: the streams go on without waiting for them (more results
    than the sinks' queues hold arrive while they are down, so a stream that waited on a full
    queue or a reconnect would stall), every frame answered once, while the sinks count what
    they drop; the brokers come back on the same ports and publishing resumes with no gateway
    restart, each message as its socket got it."""
    mq = brokers(mosquitto(tmp_path))
    ns = brokers(nats_server(tmp_path))
    mqtt_sink, nats_sink = f"mqtt://127.0.0.1:{mq.port}/edge", f"nats://127.0.0.1:{ns.port}/edge"
    sinks = (mqtt_sink, nats_sink)
    queue = 32
    settings = sink_settings(face_repo, mqtt_sink, nats_sink, sink_queue=queue)
    stop = asyncio.Event()

    def results(clients: list[tuple[Any, Books]]) -> int:
        return sum(len(b.replies) for _, b in clients)

    async def dropped(sink: str) -> float:
        return total(await _scrape(url), "edge_sink_dropped_total", sink=sink)

    async with running(settings) as (url, app), aiohttp.ClientSession() as http:
        clients = [await open_stream(http, url) for _ in range(2)]
        streams = [
            asyncio.create_task(lockstep(ws, b, photos, lambda _s: stop.is_set()))
            for ws, b in clients
        ]
        try:
            await until(lambda: results(clients) >= 20, 60, "the streams under way")
            await asyncio.gather(asyncio.to_thread(mq.stop), asyncio.to_thread(ns.stop))
            more = results(clients) + 3 * queue  # past what every sink's queue can hold
            await until(
                lambda: results(clients) >= more,
                deadline(frames=3 * queue),
                f"{3 * queue} results while the brokers are down",
            )

            async def down(sink: str) -> bool:
                m = await _scrape(url)
                return (
                    total(m, "edge_sink_connected", sink=sink) == 0
                    and total(m, "edge_sink_dropped_total", sink=sink, reason="queue_full") > 0
                )

            # a publish under way when its broker went waits out its timeout before the sink
            # says so; meanwhile the streams go on, so its queue overflows: wait for both
            limit = time.monotonic() + 3 * settings.sink_timeout_s + deadline(frames=3 * queue)
            for sink in sinks:
                while not await down(sink):
                    assert time.monotonic() < limit, f"{sink}: still connected, or drops nothing"
                    await asyncio.sleep(0.05)
            await asyncio.gather(asyncio.to_thread(mq.start), asyncio.to_thread(ns.start))

            async def connected() -> bool:
                m = await _scrape(url)
                return all(total(m, "edge_sink_connected", sink=s) == 1 for s in sinks)

            for _ in range(1500):  # a safety net of 30 s: reconnects wait 1 s at most
                if await connected():
                    break
                await asyncio.sleep(0.02)
            before = {s: await dropped(s) for s in sinks}
            async with mqtt_messages(mq.port) as by_mqtt, nats_messages(ns.port) as by_nats:
                sessions = {b.hello["session"] for _, b in clients}

                def resumed(got: list[tuple[str, dict[str, Any]]]) -> bool:
                    return {m["session"] for _, m in got} == sessions and len(got) >= 10

                await until(lambda: resumed(by_mqtt) and resumed(by_nats), 30, "publishing")
                stop.set()
                await asyncio.gather(*streams)
        finally:
            stop.set()
            await asyncio.gather(*streams, return_exceptions=True)
        after = {s: await dropped(s) for s in sinks}
    expected = socket_results(clients)
    for got in (by_mqtt, by_nats):
        assert published(got).items() <= expected.items()
    for _, books in clients:
        assert not books.unanswered() and not books.answered_twice()
        assert set(books.kinds()) == {"result"}, books.kinds()
    assert after == before, "messages were dropped after the brokers came back"


@pytest.mark.integration
async def test_a_broker_that_never_reads_costs_bounded_memory(
    spawn_gateway: Callable[..., GatewayProcess], face_repo: Path, photos: list[bytes]
) -> None:
    """A broker that accepts the connection and never reads a byte: connects time out and are
    retried, results queue up to sink_queue and the oldest are dropped, counted; the gateway's
    memory and descriptors stay flat and every frame still gets its result."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)  # never read, never answer

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sinks = f"mqtt://127.0.0.1:{port}/edge,nats://127.0.0.1:{port}/edge"
    capacity = 50
    env = {
        "EDGE_PROCESSES": "1",
        "EDGE_SINKS": sinks,
        "EDGE_SINK_QUEUE": str(capacity),
        "EDGE_SINK_TIMEOUT_S": "1",
        "EDGE_SINK_RETRY_MAX_S": "1",
        **NO_RATE_LIMITS,
    }
    gw = spawn_gateway(face_repo, env)
    try:
        await wait_ready(gw.url)
        async with aiohttp.ClientSession() as http:
            clients = [await open_stream(http, gw.url) for _ in range(2)]
            for n, measure in ((100, True), (700, False)):  # a warm-up, then the run measured
                await asyncio.gather(
                    *(lockstep(ws, b, photos, lambda s, n=n: s >= n) for ws, b in clients)
                )
                if measure:
                    rss, fds = gw.rss_mb(), gw.fds()
            grown, more_fds = gw.rss_mb() - rss, gw.fds() - fds
            metrics = await scrape(http, gw.url)
    finally:
        server.close()
        for w in held:
            w.close()
    assert held, "the sinks never reached the silent broker"
    results = sum(b.kinds().get("result", 0) for _, b in clients)
    assert results == 1400, [b.kinds() for _, b in clients]
    for sink in (f"mqtt://127.0.0.1:{port}/edge", f"nats://127.0.0.1:{port}/edge"):
        assert total(metrics, "edge_sink_connected", sink=sink) == 0
        assert total(metrics, "edge_sink_published_total", sink=sink) == 0
        lost = total(metrics, "edge_sink_dropped_total", sink=sink, reason="queue_full")
        assert lost >= results - capacity, f"{sink}: the queue held more than {capacity}"
    assert grown < 25, f"RSS grew {grown:.1f} MB over 1200 results"
    assert more_fds < 16, f"{more_fds} more descriptors: connections leak per retry"


@pytest.mark.integration
def test_a_wrong_sink_url_stops_start_up_with_an_error_naming_the_sink(face_repo: Path) -> None:
    """The gateway refuses to start with a sink it cannot even parse, and says which and why,
    without printing its password."""
    for url, why in (
        ("kafka://svc:hunter2@127.0.0.1:9092/edge", "unknown scheme 'kafka'"),
        ("mqtt://svc:hunter2@127.0.0.1/edge?qos=2", "qos must be 0 or 1"),
    ):
        run = subprocess.run(
            [sys.executable, "-m", "edge", "serve", "--models", str(face_repo), "--sink", url],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "EDGE_PORT": str(free_port())},
        )
        assert run.returncode == 2, run.stderr
        assert "bad setting: sinks:" in run.stderr and why in run.stderr
        assert "127.0.0.1" in run.stderr and "hunter2" not in run.stderr


@pytest.mark.integration
async def test_refused_credentials_leave_the_gateway_serving_with_the_sink_down(
    brokers: Callable[..., Broker],
    tmp_path: Path,
    face_repo: Path,
    photos: list[bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The documented choice: a broker that refuses the credentials does not stop the gateway;
    the log names the sink and the broker's reason (not the password), the gauge says 0, and
    the streams are served."""
    mq = brokers(mosquitto(tmp_path, users={"edge": "right-password"}))
    ns = brokers(nats_server(tmp_path, "--user", "edge", "--pass", "right-password"))
    settings = sink_settings(
        face_repo,
        f"mqtt://edge:wrong-password-1@127.0.0.1:{mq.port}/edge",
        f"nats://edge:wrong-password-2@127.0.0.1:{ns.port}/edge",
    )
    labels = [f"mqtt://127.0.0.1:{mq.port}/edge", f"nats://127.0.0.1:{ns.port}/edge"]
    with caplog.at_level("INFO", logger="edge.sinks"):
        async with running(settings) as (url, _), aiohttp.ClientSession() as http:
            ws, books = await open_stream(http, url)
            await lockstep(ws, books, photos, lambda s: s >= 8)
            assert books.kinds() == {"result": 8}
            await until(lambda: all(f"sink {s}: cannot connect" in caplog.text for s in labels),
                        30, "the refusals logged")  # fmt: skip
            metrics = await _scrape(url)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    mqtt_error = next(e for e in errors if labels[0] in e)
    nats_error = next(e for e in errors if labels[1] in e)
    refusals = ("not authori", "bad user name or password")  # mosquitto answers either
    assert any(r in mqtt_error.lower() for r in refusals), mqtt_error
    assert "authorization" in nats_error.lower(), nats_error
    assert "wrong-password" not in caplog.text
    for label in labels:
        assert total(metrics, "edge_sink_connected", sink=label) == 0
    assert not any("wrong-password" in str(key) for key in metrics)


@pytest.mark.integration
async def test_each_process_publishes_its_own_streams_and_metrics_add_up(
    brokers: Callable[..., Broker],
    tmp_path: Path,
    spawn_gateway: Callable[..., GatewayProcess],
    face_repo: Path,
    photos: list[bytes],
) -> None:
    """Two serving processes, streams on both: each publishes its own streams' results once
    (not twice, not only one process's), and /metrics from either process adds them up."""
    mq = brokers(mosquitto(tmp_path))
    ns = brokers(nats_server(tmp_path))
    sinks = [f"mqtt://127.0.0.1:{mq.port}/edge", f"nats://127.0.0.1:{ns.port}/edge"]
    env = {"EDGE_PROCESSES": "2", "EDGE_SINKS": ",".join(sinks), **NO_RATE_LIMITS}
    gw = spawn_gateway(face_repo, env)
    await wait_ready(gw.url)
    async with (
        mqtt_messages(mq.port) as by_mqtt,
        nats_messages(ns.port) as by_nats,
        aiohttp.ClientSession() as http,
    ):
        clients = await streams_on_both(http, gw.url)
        n = 10 * len(clients)
        await asyncio.gather(*(lockstep(ws, b, photos, lambda s: s >= 10) for ws, b in clients))
        expected = socket_results(clients)
        await until(lambda: len(by_mqtt) >= n and len(by_nats) >= n, 30, f"{n} messages each")
        await asyncio.sleep(0.2)  # a message too many would arrive now
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as p:
            scrapes = [await scrape(p, gw.url) for _ in range(4)]
    assert len(expected) == n
    assert published(by_mqtt) == expected and published(by_nats) == expected
    for metrics in scrapes:  # whichever process answered
        for sink in sinks:
            assert total(metrics, "edge_sink_published_total", sink=sink) == n
            assert total(metrics, "edge_sink_connected", sink=sink) == 1


@pytest.mark.integration
async def test_a_jetstream_sink_without_a_stream_says_what_to_create_and_stays_down(
    caplog: pytest.LogCaptureFixture,
    brokers: Callable[..., Broker],
    tmp_path: Path,
    face_repo: Path,
    face_jpeg: bytes,
) -> None:
    """Guards against the documented `?jetstream=1` failing unexplained: with no stream that
    captures the sink's subjects, the log says which subjects and how to create one, the gauge
    stays 0 (not 1 while every publish fails), the streams are served; once a stream exists
    the sink connects by itself and its messages are stored."""
    ns = brokers(nats_server(tmp_path, jetstream=True))
    label = f"nats://127.0.0.1:{ns.port}/js"
    settings = sink_settings(face_repo, f"{label}?jetstream=1")
    nc = await nats.connect(f"nats://127.0.0.1:{ns.port}")
    js = nc.jetstream()

    async def connected(url: str) -> float:
        return total(await _scrape(url), "edge_sink_connected", sink=label)

    try:
        with caplog.at_level("INFO", logger="edge.sinks"):
            async with running(settings) as (url, _), aiohttp.ClientSession() as http:
                ws, books = await open_stream(http, url)
                await lockstep(ws, books, [face_jpeg], lambda s: s >= 4)
                assert books.kinds() == {"result": 4}
                await until(lambda: "no JetStream stream captures js.results.>" in caplog.text,
                            30, "the missing stream logged")  # fmt: skip
                assert "nats stream add EDGE --subjects 'js.>'" in caplog.text
                assert await connected(url) == 0
                await js.add_stream(name="EDGE_JS", subjects=["js.>"])
                for _ in range(1500):  # a safety net of 30 s: reconnects wait 1 s at most
                    if await connected(url) == 1:
                        break
                    await asyncio.sleep(0.02)
                assert await connected(url) == 1
                await lockstep(ws, books, [face_jpeg], lambda s: s >= 8)
                for _ in range(1500):  # a safety net of 30 s, not a speed check
                    if (await js.stream_info("EDGE_JS")).state.messages >= 4:
                        break
                    await asyncio.sleep(0.02)
        assert (await js.stream_info("EDGE_JS")).state.messages >= 4
    finally:
        await nc.close()
