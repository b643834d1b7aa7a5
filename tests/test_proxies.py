"""The sandbox's ways out: the allowlisting egress proxy and the key-swapping model proxy.

Both are spoken to over their Unix sockets, as the socat bridge inside the sandbox does.
Upstreams are real local servers (an echo server, aiohttp apps, the replay Messages API).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from multidict import CIMultiDict

from fixfleet.config import Settings
from fixfleet.replay import ReplayServer
from fixfleet.workspace.egress import (
    Allowlist,
    EgressPolicy,
    EgressProxy,
    node_addresses,
)
from fixfleet.workspace.environments import platform_egress_policy
from fixfleet.workspace.model_proxy import OAUTH_BETA, ModelProxy, upstream_headers

REAL_KEY = "sk-ant-api03-REAL-platform-secret-0123456789"
OAUTH_TOKEN = "sk-ant-oat01-REAL-oauth-secret-0123456789"
TOOLS = [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}]
MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True, "tools": TOOLS,
           "messages": [{"role": "user", "content": "hello"}]}
CLIENT_HEADERS = {"anthropic-version": "2023-06-01",
                  "anthropic-beta": "fine-grained-tool-streaming-2025-05-14",
                  "user-agent": "claude-cli/2.0.0 (external, cli)", "x-stainless-lang": "js"}


# -- shared helpers ----------------------------------------------------------------------------


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory: AF_UNIX paths are limited to 107 bytes, pytest's tmp_path can be long."""
    path = Path(tempfile.mkdtemp(prefix="ffeg-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def exchange(sock: Path, data: bytes) -> tuple[int, str]:
    """Send raw bytes, read the answer to EOF: (status, body)."""
    reader, writer = await asyncio.open_unix_connection(str(sock))
    try:
        writer.write(data)
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body.decode()


async def open_tunnel(sock: Path, target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(str(sock))
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
    return reader, writer


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(b"echo:" + data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@dataclass
class Upstream:
    """A small aiohttp server on 127.0.0.1 that records what reached it. `POST /v1/messages`
    answers as `mode` says: plain, gated (one event, the rest when released) or silent."""
    port: int = 0
    mode: str = "plain"
    seen: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    gone: asyncio.Event = field(default_factory=asyncio.Event)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        return await {"plain": self.plain, "gated": self.gated, "silent": self.silent}[self.mode](request)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def plain(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append((request.method, request.path_qs, dict(request.headers), body))
        return web.Response(text="from upstream:" + body.decode())

    async def gated(self, request: web.Request) -> web.StreamResponse:
        """One SSE event, then nothing until the test releases the rest."""
        self.seen.append((request.method, request.path_qs, dict(request.headers), await request.read()))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'event: message_start\ndata: {"type": "message_start"}\n\n')
        await self.release.wait()
        await response.write(b'event: message_stop\ndata: {"type": "message_stop"}\n\n')
        await response.write_eof()
        return response

    async def silent(self, request: web.Request) -> web.StreamResponse:
        """One event, then silence: only a closed connection ends it."""
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"event: ping\ndata: {}\n\n")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.gone.set()
            raise
        return response


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    state = Upstream()
    app = web.Application()
    app.router.add_post("/v1/messages", state.messages)
    app.router.add_route("*", "/{tail:.*}", state.plain)
    # handler_cancellation: `silent` learns that its client (the proxy) hung up.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    state.port = runner.addresses[0][1]
    yield state
    state.release.set()
    await runner.cleanup()


# -- EgressProxy -------------------------------------------------------------------------------


async def test_connect_tunnels_bytes_both_ways(sock_dir: Path, echo_port: int) -> None:
    target = f"127.0.0.1:{echo_port}"
    async with EgressProxy(sock_dir / "egress.sock", [target], allow_loopback=True) as proxy:
        reader, writer = await open_tunnel(proxy.socket_path, target)
        for payload in (b"hello", b"second round"):
            writer.write(payload)
            assert await asyncio.wait_for(reader.readexactly(5 + len(payload)), 5) == b"echo:" + payload
        writer.close()
    assert proxy.allowed == [("127.0.0.1", echo_port)]
    assert proxy.refused == []


async def test_close_cuts_open_tunnels(sock_dir: Path, echo_port: int) -> None:
    target = f"127.0.0.1:{echo_port}"
    proxy = await EgressProxy(sock_dir / "egress.sock", [target], allow_loopback=True).start()
    reader, writer = await open_tunnel(proxy.socket_path, target)
    await asyncio.wait_for(proxy.close(), 5)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # EOF: the tunnel is gone
    assert not proxy.socket_path.exists()
    writer.close()


@pytest.mark.parametrize("target", ["evil.example.com:443", "pypi.org:22", "files.pypi.org:443"])
async def test_host_not_on_allowlist_is_refused(sock_dir: Path, target: str) -> None:
    async with EgressProxy(sock_dir / "egress.sock", ["pypi.org"]) as proxy:
        status, body = await exchange(proxy.socket_path, f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
    host, port = target.split(":")
    assert status == 403 and body == f"{target} is not on the egress allowlist\n"
    assert [(r.host, r.port, r.status) for r in proxy.refused] == [(host, int(port), 403)]
    assert proxy.allowed == []


@pytest.mark.parametrize(("entry", "host", "port", "allowed"), [
    ("*.pythonhosted.org", "files.pythonhosted.org", 443, True),
    ("*.pythonhosted.org", "a.b.pythonhosted.org", 80, True),
    ("*.pythonhosted.org", "pythonhosted.org", 443, False),  # the apex is not covered
    ("*.pythonhosted.org", "evilpythonhosted.org", 443, False),
    ("*.pythonhosted.org", "files.pythonhosted.org.evil.com", 443, False),
    ("*.pythonhosted.org", "files.pythonhosted.org", 8443, False),
    ("pypi.org", "PyPI.ORG.", 443, True),  # case and a trailing dot do not matter
    ("PyPI.org.", "pypi.org", 80, True),
    ("pypi.org", "www.pypi.org", 443, False),
    ("pypi.org", "pypi.org", 22, False),
    ("registry.npmjs.org:443", "registry.npmjs.org", 443, True),
    ("registry.npmjs.org:443", "registry.npmjs.org", 80, False),
    ("10.1.2.3:8081", "10.1.2.3", 8081, True),
    ("10.1.2.3", "10.1.2.4", 443, False),
    ("*.0.0.1", "127.0.0.1", 443, False),  # wildcards never match IP literals
    ("[::1]:8080", "::1", 8080, True),
    ("[::1]:8080", "[0:0::1]", 8080, True),
])
def test_allowlist_rules(entry: str, host: str, port: int, allowed: bool) -> None:
    assert Allowlist([entry]).permits(host, port) is allowed


@pytest.mark.parametrize("entry", ["*.10.0.0.1", "pypi.org:0", "pypi.org:http", "bad host", "[pypi.org]"])
def test_bad_allowlist_entries_fail_fast(entry: str) -> None:
    with pytest.raises(ValueError):
        Allowlist([entry])


@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "a loopback address"), ("127.8.9.10", "a loopback address"), ("::1", "a loopback address"),
    ("::ffff:127.0.0.1", "a loopback address"), ("169.254.169.254", "a link-local address"),
    ("fe80::1", "a link-local address"), ("224.0.0.1", "a multicast address"), ("ff02::1", "a multicast address"),
    ("0.0.0.0", "an unspecified address"), ("::", "an unspecified address"), ("0.1.2.3", "an unspecified address"),
    # Private ranges only when the operator allows them: RFC 1918, CGNAT, unique-local, benchmarking,
    # reserved; an IPv6 form of a private IPv4 address (mapped, NAT64, 6to4) too.
    ("10.0.0.5", "a private address"), ("172.16.4.4", "a private address"), ("192.168.1.10", "a private address"),
    ("100.64.0.1", "a private address"), ("fd00::5", "a private address"), ("198.18.0.1", "a private address"),
    ("240.0.0.1", "a private address"), ("fec0::1", "a private address"), ("192.0.0.1", "a private address"),
    ("::ffff:10.0.0.1", "a private address"), ("64:ff9b::a00:1", "a private address"),
    ("2002:a00:1::1", "a private address"), ("64:ff9b::7f00:1", "a loopback address"),
    ("93.184.215.14", None), ("2606:4700::1111", None), ("64:ff9b::808:808", None),
    # Documentation ranges name no real network; labs (this one) use them for public hosts.
    ("203.0.113.80", None), ("198.51.100.7", None), ("2001:db8::1", None),
])
def test_forbidden_addresses(address: str, reason: str | None) -> None:
    found = EgressPolicy().reason(ipaddress.ip_address(address))
    assert found == reason if reason is None else (found or "").startswith(reason)


def test_the_operator_allows_private_ranges_but_never_the_rest() -> None:
    everything = EgressPolicy(allow_private=True)
    some = EgressPolicy(private_allowed=(ipaddress.ip_network("10.20.0.0/16"),))
    for address in ("10.0.0.5", "100.64.0.1", "fd00::5", "::ffff:192.168.1.1"):
        assert everything.reason(ipaddress.ip_address(address)) is None
    assert some.reason(ipaddress.ip_address("10.20.3.4")) is None
    assert some.reason(ipaddress.ip_address("10.21.3.4")).startswith("a private address")
    for policy in (everything, some):  # loopback, link-local (cloud metadata) stay out of reach
        assert policy.reason(ipaddress.ip_address("127.0.0.1")) == "a loopback address"
        assert policy.reason(ipaddress.ip_address("169.254.169.254")) == "a link-local address"


def test_allow_loopback_relaxes_only_loopback() -> None:
    assert EgressPolicy(allow_loopback=True).reason(ipaddress.ip_address("127.0.0.1")) is None
    assert EgressPolicy(allow_loopback=True).reason(ipaddress.ip_address("169.254.169.254")) == "a link-local address"


@pytest.mark.parametrize("request_head", [
    "CONNECT localhost:443 HTTP/1.1", "CONNECT LocalHost.:80 HTTP/1.1",
    "CONNECT 127.0.0.1:443 HTTP/1.1", "CONNECT [::1]:443 HTTP/1.1",
    "CONNECT 169.254.169.254:80 HTTP/1.1", "GET http://localhost/ HTTP/1.1",
])
async def test_ssrf_guard_refuses_listed_internal_hosts(sock_dir: Path, request_head: str) -> None:
    allow = ["localhost", "127.0.0.1", "::1", "169.254.169.254"]
    async with EgressProxy(sock_dir / "egress.sock", allow) as proxy:
        status, body = await exchange(proxy.socket_path, f"{request_head}\r\n\r\n".encode())
    assert status == 403 and ("a loopback address" in body or "a link-local address" in body)
    assert [r.status for r in proxy.refused] == [403] and proxy.allowed == []


def node_ip(version: int) -> str:
    """An address of one of this machine's own interfaces (not loopback or link-local)."""
    found = [str(n.network_address) for n in node_addresses() if n.version == version
             and not n.network_address.is_loopback and not n.network_address.is_link_local]
    assert found, f"this machine has no IPv{version} address of its own besides loopback"
    return found[0]


async def test_the_node_itself_is_refused_by_address_and_by_name(sock_dir: Path) -> None:
    """Everything a `.fixfleet.yml` could name to reach this node: its addresses as literals,
    and names the resolver turns into them (the decimal and hex forms of an IPv4 address are
    names to the proxy, which the system resolver answers with the node's address). Refused
    even where the operator allows private ranges."""
    v4 = ipaddress.IPv4Address(node_ip(4))
    targets = [f"{v4}:443", f"{int(v4)}:443", f"{hex(int(v4))}:443", f"[::ffff:{v4}]:443"]
    targets += [f"[{n.network_address}]:443" for n in node_addresses() if n.version == 6
                and not n.network_address.is_loopback and not n.network_address.is_link_local][:1]
    for policy in (EgressPolicy(), EgressPolicy(allow_private=True)):
        async with EgressProxy(sock_dir / "egress.sock", targets, policy=policy, connect_timeout_s=1) as proxy:
            for target in targets:
                status, body = await exchange(proxy.socket_path, f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
                print(f"CONNECT {target} -> {status} {body.strip()}")
                assert status == 403 and body.strip().endswith("this node's own address"), body
        assert proxy.allowed == [] and len(proxy.refused) == len(targets)


async def test_private_addresses_only_with_the_operators_setting(sock_dir: Path) -> None:
    """A private address is refused by the policy without the operator's setting; with it the
    proxy goes on to connect (whatever it finds there: a tunnel, or 502/504 for nothing),
    which is what allowed means."""
    target = "10.255.255.1:443"
    policies = {"none": EgressPolicy(), "all private": EgressPolicy(allow_private=True),
                "10.0.0.0/8": EgressPolicy(private_allowed=(ipaddress.ip_network("10.0.0.0/8"),)),
                "192.168.0.0/16": EgressPolicy(private_allowed=(ipaddress.ip_network("192.168.0.0/16"),))}
    outcomes = {}
    for name, policy in policies.items():
        async with EgressProxy(sock_dir / "egress.sock", [target], policy=policy, connect_timeout_s=0.5) as proxy:
            reader, writer = await asyncio.open_unix_connection(str(proxy.socket_path))
            writer.write(f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            body = await asyncio.wait_for(reader.read(), 5) if b" 200 " not in head else b""
            writer.close()
            outcomes[name] = (int(head.split(b" ")[1]), body.decode(), [r.reason for r in proxy.refused])
        print(f"allowed ranges {name}: CONNECT {target} -> {outcomes[name][:2]}")
    for refused in ("none", "192.168.0.0/16"):
        status, body, _ = outcomes[refused]
        assert status == 403 and body.startswith("10.255.255.1 is a private address") and \
            "FIXFLEET_EGRESS_ALLOW_PRIVATE" in body
    for allowed in ("all private", "10.0.0.0/8"):
        status, _, reasons = outcomes[allowed]
        assert status in (200, 502, 504) and not [r for r in reasons if "private" in r]


async def test_platform_services_and_cluster_ranges_are_refused_whatever_is_allowed(sock_dir: Path) -> None:
    environ = {"DATABASE_URL": "postgresql://fixfleet:pw@10.1.2.3:5432/fixfleet", "REDIS_URL": "redis://10.1.2.4:6379/0",
               "RAY_ADDRESS": "10.1.2.5:6379", "FIXFLEET_URL": "http://10.1.2.6:8000",
               "KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    policy = await EgressPolicy.for_platform(allow_private=True, deny_cidrs=["100.64.0.0/10"], environ=environ)
    expected = {"10.1.2.3": "(DATABASE_URL)", "10.1.2.4": "(REDIS_URL)", "10.1.2.5": "(RAY_ADDRESS)",
                "10.1.2.6": "(FIXFLEET_URL)", "10.96.0.1": "(KUBERNETES_SERVICE_HOST)",
                "100.100.1.1": "(FIXFLEET_EGRESS_DENY_CIDRS)"}
    async with EgressProxy(sock_dir / "egress.sock", [f"{a}:5432" for a in expected], policy=policy) as proxy:
        for address, named in expected.items():
            status, body = await exchange(proxy.socket_path, f"CONNECT {address}:5432 HTTP/1.1\r\n\r\n".encode())
            print(f"CONNECT {address}:5432 -> {status} {body.strip()}")
            assert status == 403 and body.strip().endswith(named), body
    assert proxy.allowed == []


async def test_the_settings_make_the_platforms_policy() -> None:
    settings = Settings(_env_file=None, database_url="postgresql://u:pw@10.9.8.7:5432/db", egress_allow_private=True,
                        egress_deny_cidrs=["10.96.0.0/12"], sandbox="on")
    policy = await platform_egress_policy(settings)
    assert "DATABASE_URL" in (policy.reason(ipaddress.ip_address("10.9.8.7")) or "")
    assert "FIXFLEET_EGRESS_DENY_CIDRS" in (policy.reason(ipaddress.ip_address("10.100.0.1")) or "")
    assert policy.reason(ipaddress.ip_address("10.0.0.1")) is None  # private, and allowed
    strict = await platform_egress_policy(Settings(_env_file=None, egress_allow_cidrs=["10.0.0.0/24"]))
    assert strict.reason(ipaddress.ip_address("10.0.0.1")) is None
    assert strict.reason(ipaddress.ip_address("10.0.1.1")).startswith("a private address")


async def test_plain_http_request_is_forwarded_in_origin_form(sock_dir: Path, upstream: Upstream) -> None:
    authority = f"127.0.0.1:{upstream.port}"
    head = (f"POST http://{authority}/simple/pkg/?x=1 HTTP/1.1\r\nHost: elsewhere.example\r\n"
            "Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic c2VjcmV0\r\n"
            "Accept: text/html\r\nContent-Length: 5\r\n\r\nhello")
    async with EgressProxy(sock_dir / "egress.sock", [authority], allow_loopback=True) as proxy:
        status, body = await exchange(proxy.socket_path, head.encode())
    assert (status, body) == (200, "from upstream:hello")
    [(method, path, headers, sent)] = upstream.seen
    assert (method, path, sent) == ("POST", "/simple/pkg/?x=1", b"hello")
    assert headers["Host"] == authority and headers["Connection"] == "close"
    assert headers["Accept"] == "text/html"
    assert "Proxy-Connection" not in headers and "Proxy-Authorization" not in headers
    assert proxy.allowed == [("127.0.0.1", upstream.port)]


@pytest.mark.parametrize("head", [
    b"garbage\r\n\r\n",
    b"GET /relative HTTP/1.1\r\nHost: pypi.org\r\n\r\n",
    b"CONNECT pypi.org HTTP/1.1\r\n\r\n",
    b"CONNECT pypi.org:99999 HTTP/1.1\r\n\r\n",
    b"CONNECT bad_host!:443 HTTP/1.1\r\n\r\n",
    b"GET http://pypi.org/ HTTP/2\r\n\r\n",
    b"GET https://pypi.org/ HTTP/1.1\r\n\r\n",
    b"GET http://user:pw@pypi.org/ HTTP/1.1\r\n\r\n",
    b"GET http://pypi.org/ HTTP/1.1\r\nnot a header\r\n\r\n",
    b"GET http://pypi.org/ HTTP/1.1\r\nX-A: 1\nInjected: yes\r\n\r\n",
    b"GET http://pypi.org/ HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n",
    b"GET http://pypi.org/ HTTP/1.1\r\n",  # the client hangs up inside the head
])
async def test_malformed_requests_get_400(sock_dir: Path, head: bytes) -> None:
    async with EgressProxy(sock_dir / "egress.sock", ["pypi.org"]) as proxy:
        reader, writer = await asyncio.open_unix_connection(str(proxy.socket_path))
        writer.write(head)
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert answer.endswith(b"\n") and answer.count(b"\n", answer.index(b"\r\n\r\n") + 4) == 1
    assert [r.status for r in proxy.refused] == [400] and proxy.allowed == []


async def test_oversized_and_slow_heads_are_refused(sock_dir: Path) -> None:
    async with EgressProxy(sock_dir / "egress.sock", ["pypi.org"], head_timeout_s=0.2) as proxy:
        big = b"GET http://pypi.org/ HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
        assert (await exchange(proxy.socket_path, big))[0] == 431
        assert (await exchange(proxy.socket_path, b"CONNECT pypi.org:443 HTTP/1.1\r\n"))[0] == 408
    assert [r.status for r in proxy.refused] == [431, 408]


async def test_unreachable_upstream_is_502(sock_dir: Path) -> None:
    target = f"127.0.0.1:{closed_port()}"
    async with EgressProxy(sock_dir / "egress.sock", [target], allow_loopback=True) as proxy:
        status, body = await exchange(proxy.socket_path, f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
    assert status == 502 and body.startswith(f"cannot connect to {target}")
    assert proxy.allowed == [] and proxy.refused[0].status == 502


async def test_stale_socket_file_is_replaced(sock_dir: Path, echo_port: int) -> None:
    path = sock_dir / "nested" / "egress.sock"
    target = f"127.0.0.1:{echo_port}"
    async with EgressProxy(path, [target], allow_loopback=True):
        pass
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # a socket file nobody listens on, as a crash leaves it
    stale.close()
    async with EgressProxy(path, [target], allow_loopback=True) as proxy:
        _, writer = await open_tunnel(path, target)
        writer.close()
        assert "rules=1" in repr(proxy)


# -- ModelProxy --------------------------------------------------------------------------------


@pytest.fixture
def replay() -> Iterator[ReplayServer]:
    with ReplayServer("one_turn") as server:
        yield server


def api_key() -> tuple[str, str]:
    return "api_key", REAL_KEY


def client_for(proxy: ModelProxy) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(uds=str(proxy.socket_path))
    return httpx.AsyncClient(transport=transport, base_url="http://sandbox", timeout=5,
                             trust_env=False)


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


@pytest.mark.parametrize("style", ["x-api-key", "bearer"])
async def test_model_request_reaches_upstream_with_the_real_key(
        sock_dir: Path, replay: ReplayServer, style: str) -> None:
    async with ModelProxy(sock_dir / "model.sock", replay.url, api_key) as proxy:
        key = proxy.add_session()
        auth = {"x-api-key": key} if style == "x-api-key" else {"authorization": f"Bearer {key}"}
        async with client_for(proxy) as client, client.stream(
                "POST", "/v1/messages?beta=true", json=MESSAGE, headers=CLIENT_HEADERS | auth) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"
            text = "".join([chunk async for chunk in response.aiter_text()])
    assert "Nothing to do." in text and "message_stop" in text
    [recorded] = replay.requests
    headers = lower(recorded.headers)
    assert (recorded.method, recorded.path, recorded.query) == ("POST", "/v1/messages", {"beta": "true"})
    assert recorded.kind == "main" and recorded.body == MESSAGE
    assert headers["x-api-key"] == REAL_KEY and "authorization" not in headers
    assert key not in recorded.text()
    for name, value in CLIENT_HEADERS.items():
        assert headers[name] == value
    assert headers["accept-encoding"] == "identity"
    assert proxy.requests == {key: 1}


@pytest.mark.parametrize("auth", ["none", "unknown", "unknown-bearer", "removed", "basic", "one-unknown"])
async def test_requests_without_a_live_session_key_get_401(
        sock_dir: Path, replay: ReplayServer, auth: str) -> None:
    async with ModelProxy(sock_dir / "model.sock", replay.url, api_key) as proxy:
        key = proxy.add_session()
        headers = {
            "none": {},
            "unknown": {"x-api-key": "sk-ant-fixfleet-session-made-up"},
            "unknown-bearer": {"authorization": "Bearer sk-ant-fixfleet-session-made-up"},
            "removed": {"x-api-key": key},
            "basic": {"x-api-key": key, "authorization": f"Basic {key}"},
            "one-unknown": {"x-api-key": key, "authorization": "Bearer sk-made-up"},
        }[auth]
        if auth == "removed":
            assert proxy.remove_session(key) == 0
        async with client_for(proxy) as client:
            response = await client.post("/v1/messages", json=MESSAGE, headers=CLIENT_HEADERS | headers)
    assert response.status_code == 401
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "authentication_error"
    assert error["error"]["message"]
    assert replay.requests == []


async def test_oauth_credential_goes_upstream_as_bearer_with_the_beta(
        sock_dir: Path, replay: ReplayServer) -> None:
    async with ModelProxy(sock_dir / "model.sock", replay.url, lambda: ("oauth_token", OAUTH_TOKEN)) as proxy:
        key = proxy.add_session()
        async with client_for(proxy) as client:
            response = await client.post("/v1/messages", json=MESSAGE | {"stream": False},
                                         headers=CLIENT_HEADERS | {"x-api-key": key})
    assert response.status_code == 200 and response.json()["type"] == "message"
    headers = lower(replay.requests[0].headers)
    assert headers["authorization"] == f"Bearer {OAUTH_TOKEN}" and "x-api-key" not in headers
    assert headers["anthropic-beta"] == f"fine-grained-tool-streaming-2025-05-14,{OAUTH_BETA}"
    assert key not in replay.requests[0].text()


@pytest.mark.parametrize(("betas", "expected"), [
    ([], OAUTH_BETA),
    (["a-1, b-2"], f"a-1,b-2,{OAUTH_BETA}"),
    (["a-1", f"{OAUTH_BETA}"], f"a-1,{OAUTH_BETA}"),  # never twice
])
def test_oauth_beta_is_merged(betas: list[str], expected: str) -> None:
    incoming = CIMultiDict([("anthropic-beta", beta) for beta in betas])
    incoming.add("Connection", "keep-alive, X-Hop")
    incoming.add("X-Hop", "only for this connection")
    headers = upstream_headers(incoming, "oauth_token", OAUTH_TOKEN)
    assert headers.getall("anthropic-beta") == [expected]
    assert "connection" not in headers and "x-hop" not in headers


async def test_credential_is_read_per_request(sock_dir: Path, replay: ReplayServer) -> None:
    keys = iter([REAL_KEY, REAL_KEY + "-rotated"])

    async def rotating() -> tuple[str, str]:  # an async credential works too
        return "api_key", next(keys)

    async with ModelProxy(sock_dir / "model.sock", replay.url, rotating) as proxy:
        key = proxy.add_session()
        async with client_for(proxy) as client:
            for _ in range(2):
                await client.post("/v1/messages/count_tokens", json=MESSAGE, headers={"x-api-key": key})
    assert [lower(r.headers)["x-api-key"] for r in replay.requests] == [REAL_KEY, REAL_KEY + "-rotated"]
    assert proxy.requests[key] == 2


async def test_key_file_newline_is_stripped_and_bad_credentials_are_500(
        sock_dir: Path, replay: ReplayServer) -> None:
    credentials = iter([("api_key", REAL_KEY + "\n"), ("api_key", "two\nlines"), ("password", "x")])
    async with ModelProxy(sock_dir / "model.sock", replay.url, lambda: next(credentials)) as proxy:
        key = proxy.add_session()
        async with client_for(proxy) as client:
            statuses = [(await client.post("/v1/messages/count_tokens", json=MESSAGE,
                                           headers={"x-api-key": key})).status_code for _ in range(3)]
    assert statuses == [200, 500, 500]
    assert [lower(r.headers)["x-api-key"] for r in replay.requests] == [REAL_KEY]


async def test_stream_arrives_incrementally(sock_dir: Path, upstream: Upstream) -> None:
    upstream.mode = "gated"
    async with ModelProxy(sock_dir / "model.sock", upstream.url, api_key) as proxy:
        key = proxy.add_session()
        async with client_for(proxy) as client, client.stream(
                "POST", "/v1/messages", json=MESSAGE, headers={"x-api-key": key}) as response:
            chunks = response.aiter_raw()
            first = b""
            while b"\n\n" not in first:  # must arrive while upstream still holds the rest
                first += await asyncio.wait_for(anext(chunks), 2)
            assert b"message_start" in first and b"message_stop" not in first
            upstream.release.set()
            rest = b"".join([chunk async for chunk in chunks])
    assert b"message_stop" in rest
    assert response.headers["content-type"] == "text/event-stream"


async def test_client_leaving_closes_the_upstream_stream(sock_dir: Path, upstream: Upstream) -> None:
    upstream.mode = "silent"
    async with ModelProxy(sock_dir / "model.sock", upstream.url, api_key) as proxy:
        key = proxy.add_session()
        async with client_for(proxy) as client:
            async with client.stream("POST", "/v1/messages", json=MESSAGE,
                                     headers={"x-api-key": key}) as response:
                await asyncio.wait_for(anext(response.aiter_raw()), 2)
            # Upstream is silent: only the proxy hanging up can end its handler.
            await asyncio.wait_for(upstream.gone.wait(), 3)


async def test_unreachable_upstream_is_a_502_api_error(sock_dir: Path) -> None:
    async with ModelProxy(sock_dir / "model.sock", f"http://127.0.0.1:{closed_port()}", api_key) as proxy:
        key = proxy.add_session()
        async with client_for(proxy) as client:
            response = await client.post("/v1/messages", json=MESSAGE, headers={"x-api-key": key})
    assert response.status_code == 502
    assert response.json()["type"] == "error" and response.json()["error"]["type"] == "api_error"
    assert proxy.requests[key] == 0


async def raw_request(sock: Path, request_line: str, key: str) -> tuple[int, str]:
    """Exactly this request line (no client library normalising it): (status, body)."""
    reader, writer = await asyncio.open_unix_connection(str(sock))
    try:
        writer.write(f"{request_line}\r\nHost: sandbox\r\nx-api-key: {key}\r\ncontent-type: application/json\r\n"
                     f"content-length: 2\r\nConnection: close\r\n\r\n{{}}".encode("latin-1"))
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body.decode(errors="replace")


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/files"), ("POST", "/v1/files"), ("POST", "/v1/messages/../files"),
    ("POST", "/v1/messages/..%2ffiles"), ("POST", "/v1/messages/..%252ffiles"), ("POST", "/v1/messages/%2e%2e/files"),
    ("POST", "/v1/messages\\..\\files"), ("POST", "/v1/messages%5c..%5cfiles"), ("POST", "/v1\\files"),
    ("POST", "/v1/messages/batches"), ("GET", "/v1/messages/batches/msgbatch_1/results"),
    ("GET", "/v1/organizations/api_keys"), ("POST", "/v1/organizations/users"), ("GET", "/admin"),
    ("GET", "/v1/%2e%2e/admin"), ("GET", "/v1/models/../../admin"), ("GET", "//api.anthropic.com/v1/files"),
    ("GET", "/v2/messages"), ("GET", "/"), ("GET", "/v1/messages"), ("DELETE", "/v1/messages"),
    ("PUT", "/v1/models"), ("POST", "/v1/%ff"), ("POST", "/v1/messages%00"),
])
async def test_only_the_clis_endpoints_are_forwarded(sock_dir: Path, replay: ReplayServer, method: str, path: str) -> None:
    async with ModelProxy(sock_dir / "model.sock", replay.url, api_key) as proxy:
        key = proxy.add_session()
        status, body = await raw_request(proxy.socket_path, f"{method} {path} HTTP/1.1", key)
    print(f"{method} {path} -> {status} {body}")
    assert status == 403 and json.loads(body)["error"]["type"] == "permission_error"
    assert replay.requests == []  # the upstream saw nothing
    assert proxy.refused == [(method, path, 403)] and proxy.requests == {key: 0}


@pytest.mark.parametrize("request_line", [
    "GET http://api.anthropic.com/v1/models HTTP/1.1", "POST http://evil.example/v1/messages HTTP/1.1",
    "POST http://x/v1/../files HTTP/1.1", "CONNECT api.anthropic.com:443 HTTP/1.1", "OPTIONS * HTTP/1.1",
    "garbage", "GET v1/models HTTP/1.1", "GET http://[::1/v1/models HTTP/1.1", "GET /v1/models#frag HTTP/1.1",
    "GET /v1/models?a=<script> HTTP/1.1",
])
async def test_absolute_form_and_malformed_request_lines_get_400(sock_dir: Path, replay: ReplayServer,
                                                                 request_line: str) -> None:
    async with ModelProxy(sock_dir / "model.sock", replay.url, api_key) as proxy:
        key = proxy.add_session()
        status, body = await raw_request(proxy.socket_path, request_line, key)
    print(f"{request_line} -> {status} {body[:120]!r}")
    assert status == 400
    assert replay.requests == []


@pytest.mark.parametrize(("method", "path", "forwarded"), [
    ("POST", "/v1/messages?beta=true", ("/v1/messages", {"beta": "true"})),
    ("POST", "/v1/./messages", ("/v1/messages", {})),
    ("POST", "/v1//messages/count_tokens?beta=true", ("/v1/messages/count_tokens", {"beta": "true"})),
    ("GET", "/v1/models?limit=1000", ("/v1/models", {"limit": "1000"})),
])
async def test_the_endpoints_go_upstream_by_their_canonical_path(
        sock_dir: Path, replay: ReplayServer, method: str, path: str, forwarded: tuple[str, dict[str, str]]) -> None:
    async with ModelProxy(sock_dir / "model.sock", replay.url, api_key) as proxy:
        key = proxy.add_session()
        async with client_for(proxy) as client:
            response = await client.request(method, path, headers=CLIENT_HEADERS | {"x-api-key": key},
                                            json=MESSAGE | {"stream": False} if method == "POST" else None)
    assert response.status_code == 200
    [recorded] = replay.requests
    assert (recorded.path, recorded.query) == forwarded


async def test_real_key_never_logged_or_shown(sock_dir: Path, replay: ReplayServer,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def leaky() -> tuple[str, str]:
        raise RuntimeError(f"vault said {REAL_KEY}")

    answers = []
    for upstream_url, credential in [(replay.url, api_key), (f"http://127.0.0.1:{closed_port()}", api_key),
                                     (replay.url, leaky)]:
        async with ModelProxy(sock_dir / "model.sock", upstream_url, credential) as proxy:
            key = proxy.add_session()
            async with client_for(proxy) as client:
                for path, auth in [("/v1/messages", key), ("/v1/messages", "bogus"), ("/nope", key)]:
                    response = await client.post(path, json=MESSAGE, headers={"x-api-key": auth})
                    answers.append((response.status_code, response.text))
            assert REAL_KEY not in repr(proxy) and key not in repr(proxy)
    assert [status for status, _ in answers] == [200, 401, 403, 502, 401, 403, 500, 401, 403]
    assert all(REAL_KEY not in text for _, text in answers)
    assert caplog.records and REAL_KEY not in caplog.text
    assert all(REAL_KEY not in record.getMessage() and REAL_KEY not in (record.exc_text or "")
               for record in caplog.records)
