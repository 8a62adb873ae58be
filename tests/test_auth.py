"""Who may connect (docs/security.md): tokens, JWTs, origins, TLS, and tokens kept out of logs."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from edge import logs
from edge.access.auth import parse_origin
from edge.access.tokens import Authenticator, Refused
from edge.settings import Settings, SettingsError
from tests.conftest import GatewayProcess, running, settings_for, wait_ready
from tests.pace import deadline
from tests.tls_util import make_tls
from tests.wsclient import next_reply

GOOD = "good-token-0123456789abcdef"
OTHER = "other-token-0123456789abcdef"
SECRET = "hs256-secret-0123456789abcdef0123456789"
ALLOWED = "https://app.example.com"
OFFER = {"type": "offer", "sdp": "v=0\r\n"}


# -- keys and tokens ---------------------------------------------------------------------------
def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    """An RS256 signing key (PEM) and the path of its public key, as EDGE_JWT_PUBLIC_KEY."""
    key = _rsa()
    path = tmp_path_factory.mktemp("jwt") / "public.pem"
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return _pem(key), path


def hs256(secret: str = SECRET, exp_in: float = 300.0, **claims: Any) -> str:
    return jwt.encode({"sub": "cam-1", "exp": int(time.time() + exp_in), **claims}, secret,
                      algorithm="HS256")  # fmt: skip


def rs256(private_pem: bytes, exp_in: float = 300.0, **claims: Any) -> str:
    return jwt.encode({"sub": "cam-2", "exp": int(time.time() + exp_in), **claims}, private_pem,
                      algorithm="RS256")  # fmt: skip


def guarded_settings(repo: Path, public_key: Path, **overrides: object) -> Settings:
    return settings_for(repo, auth_tokens=(GOOD,), jwt_secret=SECRET, jwt_public_key=public_key,
                        allowed_origins=(ALLOWED,), **overrides)  # fmt: skip


@pytest.fixture
async def guarded(face_repo: Path, rsa_key: tuple[bytes, Path]) -> AsyncIterator[str]:
    """The gateway with static tokens, HS256 and RS256 JWTs and one allowed origin."""
    async with running(guarded_settings(face_repo, rsa_key[1])) as (url, _):
        yield url


def ws_url(url: str) -> str:
    return url.replace("http", "ws", 1) + "/v1/stream"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- refused -----------------------------------------------------------------------------------
def refusals(private_pem: bytes) -> list[tuple[str, dict[str, str], int]]:
    """(case, request headers, expected status): each must be refused on every transport."""
    return [
        ("no token", {}, 401),
        ("wrong token", bearer("wrong-token-0123456789abcdef"), 401),
        ("expired JWT", bearer(hs256(exp_in=-3600)), 401),
        ("JWT with a bad HS256 signature", bearer(hs256(secret="x" * 40)), 401),
        ("JWT with a bad RS256 signature", bearer(rs256(_pem(_rsa()))), 401),
        ("JWT from the right key, expired", bearer(rs256(private_pem, exp_in=-3600)), 401),
        ("foreign Origin, good token", {**bearer(GOOD), "Origin": "https://evil.example"}, 403),
        ("own host, other port", {**bearer(GOOD), "Origin": "http://127.0.0.1:1"}, 403),
    ]


@pytest.mark.integration
async def test_refused_on_every_transport(
    guarded: str, rsa_key: tuple[bytes, Path], face_jpeg: bytes
) -> None:
    """Each of these must be turned away before it reaches a handler: a stream, a WebRTC
    offer (refused by the middleware whether or not its route exists yet) and the REST API."""
    async with aiohttp.ClientSession() as http:
        for case, headers, status in refusals(rsa_key[0]):
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await http.ws_connect(ws_url(guarded), headers=headers)
            assert e.value.status == status, case
            requests = [
                http.post(guarded + "/v1/webrtc/offer", json=OFFER, headers=headers),
                http.get(guarded + "/v1/models", headers=headers),
                http.post(
                    guarded + "/v1/models/blazeface/infer",
                    data=face_jpeg,
                    headers={**headers, "Content-Type": "image/jpeg"},
                ),  # fmt: skip
            ]
            for request in requests:
                async with request as r:
                    assert r.status == status, (case, r.url)
                    body = await r.json()
                    expected = "unauthorized" if status == 401 else "forbidden_origin"
                    assert body["error"] == expected and body["message"], (case, body)
                    if status == 401:
                        assert r.headers["WWW-Authenticate"].startswith("Bearer"), case


@pytest.mark.integration
async def test_wrong_token_by_subprotocol_query_or_message_is_refused(guarded: str) -> None:
    """Every way of passing a token is checked, not only the header."""
    async with aiohttp.ClientSession() as http:
        for kw in ({"protocols": ("edge.v1", "bearer.nope")}, {"params": {"token": "nope"}}):
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await http.ws_connect(ws_url(guarded), **kw)  # type: ignore[arg-type]
            assert e.value.status == 401, kw
        for first in ('{"type":"auth","token":"nope"}', '{"type":"ping"}', b"\xff\xd8"):
            ws = await http.ws_connect(ws_url(guarded), protocols=("edge.v1",))
            await (ws.send_bytes(first) if isinstance(first, bytes) else ws.send_str(first))
            reply = await next_reply(ws)
            assert reply["type"] == "error" and reply["code"] == "unauthorized", reply
            closing = await asyncio.wait_for(ws.receive(), deadline())
            assert closing.type == aiohttp.WSMsgType.CLOSE
            assert ws.close_code == 1008, first


@pytest.mark.integration
async def test_silent_socket_is_closed_after_the_auth_timeout(
    face_repo: Path, rsa_key: tuple[bytes, Path]
) -> None:
    """An upgrade without a token must not hold a connection open for ever."""
    settings = guarded_settings(face_repo, rsa_key[1], auth_timeout_s=0.3)
    async with running(settings) as (url, _), aiohttp.ClientSession() as http:
        ws = await http.ws_connect(ws_url(url), protocols=("edge.v1",))
        reply = await next_reply(ws, settings.auth_timeout_s + deadline())
        assert reply["code"] == "unauthorized" and "auth message" in reply["message"]
        assert (await asyncio.wait_for(ws.receive(), deadline())).type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1008


# -- accepted ----------------------------------------------------------------------------------
Connect = Callable[[aiohttp.ClientSession, str, bytes], Any]


async def _header(http: aiohttp.ClientSession, url: str, _pem: bytes) -> Any:
    return await http.ws_connect(ws_url(url), headers=bearer(GOOD))


async def _subprotocol(http: aiohttp.ClientSession, url: str, _pem: bytes) -> Any:
    ws = await http.ws_connect(ws_url(url), protocols=("edge.v1", f"bearer.{GOOD}"))
    assert ws.protocol == "edge.v1", "the server must pick edge.v1 and never echo the token"
    return ws


async def _query(http: aiohttp.ClientSession, url: str, _pem: bytes) -> Any:
    return await http.ws_connect(ws_url(url), params={"token": GOOD})


async def _message(http: aiohttp.ClientSession, url: str, _pem: bytes) -> Any:
    ws = await http.ws_connect(ws_url(url), protocols=("edge.v1",))
    await ws.send_str(json.dumps({"type": "auth", "token": GOOD}))
    return ws


async def _hs256(http: aiohttp.ClientSession, url: str, _pem: bytes) -> Any:
    return await http.ws_connect(ws_url(url), headers=bearer(hs256()))


async def _rs256(http: aiohttp.ClientSession, url: str, pem: bytes) -> Any:
    return await http.ws_connect(ws_url(url), protocols=("edge.v1", f"bearer.{rs256(pem)}"))


@pytest.mark.integration
@pytest.mark.parametrize("connect", [_header, _subprotocol, _query, _message, _hs256, _rs256],
                         ids=lambda f: f.__name__.strip("_"))  # fmt: skip
async def test_good_token_streams(
    guarded: str, rsa_key: tuple[bytes, Path], face_jpeg: bytes, connect: Connect
) -> None:
    """A good token, however it is passed, gets hello and results."""
    async with aiohttp.ClientSession() as http:
        ws = await connect(http, guarded, rsa_key[0])
        hello = await next_reply(ws)
        assert hello["type"] == "hello", hello
        await ws.send_bytes(face_jpeg)
        r = await next_reply(ws)
        assert r["type"] == "result" and r["seq"] == 0 and r["detections"], r
        await ws.close()


@pytest.mark.integration
async def test_good_token_on_rest_and_webrtc_offer(
    guarded: str, rsa_key: tuple[bytes, Path], face_jpeg: bytes
) -> None:
    """The REST API and the WebRTC offer take the same tokens; the open endpoints need none."""
    async with aiohttp.ClientSession() as http:
        for token in (GOOD, hs256(), rs256(rsa_key[0])):
            async with http.get(guarded + "/v1/models", headers=bearer(token)) as r:
                assert r.status == 200 and (await r.json())["models"]
        async with http.post(guarded + "/v1/models/blazeface/infer", data=face_jpeg,
                             params={"token": GOOD}) as r:  # fmt: skip
            assert r.status == 200 and (await r.json())["type"] == "result"
        offer = http.post(guarded + "/v1/webrtc/offer", json=OFFER, headers=bearer(GOOD))
        async with offer as r:
            assert r.status not in (401, 403)  # past the guard: the handler's answer
        for path in ("/healthz", "/readyz", "/metrics"):
            async with http.get(guarded + path) as r:
                assert r.status == 200, path


@pytest.mark.integration
async def test_own_and_allowed_origins_pass(guarded: str) -> None:
    """The dashboard served by the gateway itself, and listed origins, are browsers we trust."""
    async with aiohttp.ClientSession() as http:
        for origin in (guarded, guarded.replace("127.0.0.1", "localhost"), ALLOWED):
            headers = {**bearer(GOOD), "Origin": origin}
            if "localhost" in origin:  # own origin means the Host the request came with
                headers["Host"] = origin.split("//")[1]
            ws = await http.ws_connect(ws_url(guarded), headers=headers)
            assert (await next_reply(ws))["type"] == "hello", origin
            await ws.close()
            async with http.get(guarded + "/v1/models", headers=headers) as r:
                assert r.status == 200, origin


@pytest.mark.integration
async def test_with_auth_off_origins_are_still_checked_and_auth_messages_ignored(
    face_server: str, face_jpeg: bytes
) -> None:
    """Local development needs no token, but a foreign page still may not stream; a client
    that always sends an auth message first works against both kinds of server."""
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await http.ws_connect(ws_url(face_server), headers={"Origin": "https://evil.example"})
        assert e.value.status == 403
        ws = await http.ws_connect(ws_url(face_server), headers={"Origin": face_server})
        await ws.send_str(json.dumps({"type": "auth", "token": "anything"}))
        assert (await next_reply(ws))["type"] == "hello"
        await ws.send_bytes(face_jpeg)
        r = await next_reply(ws)
        assert r["type"] == "result" and r["seq"] == 0, r
        await ws.close()


@pytest.mark.integration
async def test_bearer_subprotocol_without_edge_v1_is_refused(guarded: str) -> None:
    """The server may only answer with a subprotocol the client offered; offered the token
    alone it would have to echo it, so it refuses instead."""
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await http.ws_connect(ws_url(guarded), protocols=(f"bearer.{GOOD}",))
        assert e.value.status == 400


# -- tokens stay out of logs -------------------------------------------------------------------
@pytest.mark.integration
async def test_tokens_never_reach_the_log(
    spawn_gateway: Callable[..., GatewayProcess], face_repo: Path, face_jpeg: bytes
) -> None:
    """Query strings end up in logs; a token passed as ?token= must not, at debug level,
    whether it is right or wrong."""
    wrong = "wrong-token-fedcba9876543210"
    jwt_token = hs256()
    gw = spawn_gateway(face_repo, {"EDGE_LOG_LEVEL": "debug", "EDGE_AUTH_TOKENS": GOOD,
                                   "EDGE_JWT_SECRET": SECRET})  # fmt: skip
    await wait_ready(gw.url)
    async with aiohttp.ClientSession() as http:
        for token in (GOOD, jwt_token):  # past the guard, refused by the handler: 404
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await http.ws_connect(ws_url(gw.url), params={"token": token, "model": "x"})
        for token in (GOOD, jwt_token):
            ws = await http.ws_connect(ws_url(gw.url), params={"token": token})
            assert (await next_reply(ws))["type"] == "hello"
            await ws.send_bytes(face_jpeg)
            await next_reply(ws)
            await ws.close()
        ws = await http.ws_connect(ws_url(gw.url), protocols=("edge.v1",))
        await ws.send_str(json.dumps({"type": "auth", "token": GOOD}))
        assert (await next_reply(ws))["type"] == "hello"
        await ws.close()
        for kw in ({"params": {"token": wrong}}, {"protocols": (f"bearer.{wrong}",)}):
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await http.ws_connect(ws_url(gw.url), **kw)  # type: ignore[arg-type]
        async with http.get(gw.url + "/v1/models", params={"token": wrong}) as r:
            assert r.status == 401
    gw.signal(signal.SIGTERM)
    await asyncio.to_thread(gw.proc.wait, Settings().drain_seconds + deadline())
    text = gw.log.read_text()
    assert "stream opened" in text and "refused" in text, text[-2000:]
    for secret in (GOOD, wrong, jwt_token, SECRET):
        assert secret not in text
    assert jwt_token.split(".")[1] not in text


@pytest.mark.unit
def test_log_formatters_redact_tokens() -> None:
    """aiohttp's own lines (the access log, its handshake warning) print what clients sent."""
    lines = [
        ('127.0.0.1 "GET /v1/stream?model=a&token=%s HTTP/1.1" 101', ()),
        (
            "%s: Client protocols %r don't overlap server-known ones %r",
            ("127.0.0.1", ["bearer.%s"], ("edge.v1",)),
        ),  # fmt: skip
        ("Authorization: Bearer %s", ()),
        ('{"type":"auth","token":"%s"}', ()),
    ]
    for fmt in (logs.TextFormatter("%(message)s"), logs.JsonFormatter()):
        for msg, args in lines:
            for token in (GOOD, hs256()):
                filled_args = tuple(
                    [a.replace("%s", token) for a in arg] if isinstance(arg, list) else arg
                    for arg in args
                )
                text = msg.replace("%s", token, 1) if not args else msg
                record = logging.LogRecord("aiohttp", logging.INFO, __file__, 1, text,
                                           filled_args, None)  # fmt: skip
                out = fmt.format(record)
                assert token not in out and "redacted" in out, out


# -- TLS ---------------------------------------------------------------------------------------
@pytest.mark.integration
async def test_edge_serve_speaks_tls(
    spawn_gateway: Callable[..., GatewayProcess], face_repo: Path, face_jpeg: bytes,
    tmp_path: Path,
) -> None:  # fmt: skip
    """`edge serve` with a certificate answers https:// and wss://, verified against it."""
    ca, cert, key = make_tls(tmp_path)
    gw = spawn_gateway(face_repo, {"EDGE_TLS_CERT": str(cert), "EDGE_TLS_KEY": str(key),
                                   "EDGE_AUTH_TOKENS": GOOD})  # fmt: skip
    url = gw.url.replace("http://", "https://")
    ctx = ssl.create_default_context(cafile=str(ca))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http:
        ends = time.monotonic() + 60  # as long as tests.conftest.wait_ready gives a server
        while True:
            try:
                async with http.get(url + "/readyz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientConnectorError:
                pass
            assert time.monotonic() < ends and gw.proc.poll() is None, gw.log.read_text()
            await asyncio.sleep(0.1)
        async with http.get(url + "/v1/models", headers=bearer(GOOD)) as r:
            assert r.status == 200
        ws = await http.ws_connect(ws_url(url), headers=bearer(GOOD))
        assert (await next_reply(ws))["type"] == "hello"
        await ws.send_bytes(face_jpeg)
        assert (await next_reply(ws))["type"] == "result"
        await ws.close()
    async with aiohttp.ClientSession() as http:  # the default trust store does not know it
        with pytest.raises(aiohttp.ClientConnectorError):
            await http.get(url + "/healthz")


# -- units -------------------------------------------------------------------------------------
@pytest.mark.unit
def test_authenticator_rejects_forged_and_incomplete_jwts(rsa_key: tuple[bytes, Path]) -> None:
    """Algorithm confusion, `none`, a missing exp, a wrong audience: all refused."""
    settings = Settings(jwt_secret=SECRET, jwt_public_key=rsa_key[1], jwt_audience="edge")
    auth = Authenticator(settings)
    assert auth.enabled
    ok = auth.verify(hs256(aud="edge"), "header")
    assert ok.identity == "jwt:cam-1" and ok.via == "header"
    assert auth.verify(rs256(rsa_key[0], aud="edge"), "query").identity == "jwt:cam-2"
    now = int(time.time())
    forged = [
        hs256(aud="other"),
        hs256(),  # no audience
        jwt.encode({"sub": "x", "aud": "edge"}, SECRET, algorithm="HS256"),  # no exp
        jwt.encode({"sub": "x", "aud": "edge", "exp": now + 60}, None, algorithm="none"),
        jwt.encode({"sub": "x", "aud": "edge", "exp": now + 60}, SECRET * 2, algorithm="HS512"),
        "not.a.jwt",
        "",
    ]
    for token in forged:
        with pytest.raises(Refused) as e:
            auth.verify(token, "header")
        assert e.value.status == 401, token


@pytest.mark.unit
def test_static_tokens_from_env_and_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# fleet A\n{OTHER}\n\n")
    auth = Authenticator(Settings(auth_tokens=(GOOD,), auth_tokens_file=path))
    a, b = auth.verify(GOOD, "header"), auth.verify(OTHER, "header")
    assert a.identity != b.identity and GOOD not in a.identity and OTHER not in b.identity
    assert not Authenticator(Settings()).enabled
    with pytest.raises(Refused):
        auth.verify(GOOD + "x", "header")


@pytest.mark.unit
def test_settings_refuse_unusable_tokens_and_origins(tmp_path: Path) -> None:
    """Mistakes that would silently lock everyone out (or let everyone in) stop the start."""
    bad_file = tmp_path / "tokens"
    bad_file.write_text("has space\n")
    for env, words in [
        ({"EDGE_AUTH_TOKENS": "a,b c"}, "openssl rand"),
        ({"EDGE_AUTH_TOKENS_FILE": str(bad_file)}, "token 1"),
        ({"EDGE_AUTH_TOKENS_FILE": str(tmp_path / "none")}, "not a file"),
        ({"EDGE_JWT_SECRET": "short"}, "32 characters"),
        ({"EDGE_ALLOWED_ORIGINS": "https://a.example.com/app"}, "scheme://host[:port]"),
        ({"EDGE_ALLOWED_ORIGINS": "*"}, "no wildcards"),
        ({"EDGE_MAX_FPS_PER_STREAM": "-1"}, "0 turns"),
    ]:
        with pytest.raises(SettingsError) as e:
            Settings.from_sources(env=env)
        assert words in str(e.value), (env, str(e.value))
    settings = Settings.from_sources(env={"EDGE_AUTH_TOKENS": GOOD, "EDGE_JWT_SECRET": SECRET})
    assert GOOD not in repr(settings) and SECRET not in repr(settings)


@pytest.mark.unit
def test_origins_compare_as_scheme_host_port() -> None:
    assert parse_origin("HTTPS://App.Example.com") == parse_origin("https://app.example.com:443")
    assert parse_origin("http://a.example:80") == ("http", "a.example", 80)
    assert parse_origin("http://a.example:8080") != parse_origin("http://a.example")
    assert parse_origin("https://a.example") != parse_origin("http://a.example")
    for bad in ("null", "a.example", "http://a.example/path", "http://u@a.example", ""):
        assert parse_origin(bad) is None, bad
