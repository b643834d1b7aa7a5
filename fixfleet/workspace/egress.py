"""One of the sandbox's two ways out: an allowlisting CONNECT proxy (the other: model_proxy.py).

Agents and repository test code run in a bubblewrap sandbox without a network
(`--unshare-net`). Platform-side proxies listen on Unix sockets that are bind-mounted into the
sandbox, where a socat bridge exposes each as `127.0.0.1:<port>`.

`EgressProxy` — HTTP CONNECT (and plain absolute-form HTTP) to an allowlist of hosts, for
package registries and the like. The allowlist is the repository's to write (`.fixfleet.yml`);
what lies behind it is not. The proxy resolves every name itself and refuses, whatever the
allowlist says (`EgressPolicy`), an address that is:

- loopback, link-local (cloud metadata), multicast or unspecified;
- one of this node's own (every address of every interface: the platform listens there);
- a platform service's (the hosts of DATABASE_URL, REDIS_URL, the Ray head, the ingress) or in
  the cluster's ranges (FIXFLEET_EGRESS_DENY_CIDRS, the Kubernetes API's address);
- private (RFC 1918, CGNAT, unique-local, benchmarking, reserved ...), unless the operator
  allows it: FIXFLEET_EGRESS_ALLOW_PRIVATE, or FIXFLEET_EGRESS_ALLOW_CIDRS for some ranges.

IPv6 forms of an IPv4 address (mapped, NAT64, 6to4) are judged as that address. Then it connects
to the very address it checked, never to the name again, so DNS rebinding cannot switch it.
A plain asyncio object: start it on the event loop that should serve it (`async with`, or
`await start()` / `await close()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import socket
import stat
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

import psutil
from pydantic import BaseModel, Field

from fixfleet.config import IPNetwork, parse_networks

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_HEAD_BYTES = 16 * 1024
DEFAULT_PORTS = frozenset({80, 443})
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL
_PIPE_CHUNK = 64 * 1024
_HOSTNAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: methods, header names
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # bare CR/LF/NUL would smuggle headers upstream
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # Linux connects 0.x.x.x to the local host
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))  # RFC 6052, 8215
# The documentation ranges (RFC 5737, 3849) name no real network: labs use them to stand in for
# public hosts (registries included), so they are judged as public, not private.
_DOCUMENTATION = tuple(ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",
                                                          "2001:db8::/32"))
PRIVATE_HINT = "an operator allows private ranges with FIXFLEET_EGRESS_ALLOW_PRIVATE or FIXFLEET_EGRESS_ALLOW_CIDRS"
# Where the platform's own services are named: their hosts are never reachable from a sandbox.
SERVICE_URLS = ("DATABASE_URL", "REDIS_URL", "RAY_ADDRESS", "FIXFLEET_URL")
# Hop-by-hop headers (RFC 9110 7.6.1) describe one connection and are never forwarded.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"})


# -- hosts and the allowlist -------------------------------------------------------------------


def normalize_host(host: str) -> str:
    """Lower case, no trailing dot or IPv6 brackets, IP literals in canonical form.

    Raises ValueError for anything that is neither a DNS name nor an IP literal, so odd bytes
    never reach the resolver or a log line."""
    host = host.strip().lower()
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host.removesuffix(".")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if bracketed or len(host) > 253 or not _HOSTNAME.fullmatch(host):
            raise ValueError(f"not a host name: {host[:80]!r}") from None
        return host
    return str(address)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def split_host_port(text: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 literal -> (host, port or None)."""
    if text.startswith("["):
        inner, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError(f"malformed address: {text[:80]!r}")
        host, port_text = f"[{inner}]", rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, None  # a name, or an IPv6 literal without brackets
    return normalize_host(host), None if port_text is None else parse_port(port_text)


def parse_port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise ValueError(f"not a port: {text[:10]!r}")
    return int(text)


@dataclass(frozen=True)
class AllowRule:
    host: str  # normalized; for a wildcard, the suffix after "*."
    wildcard: bool
    ports: frozenset[int]

    @classmethod
    def parse(cls, entry: str) -> AllowRule:
        text = entry.strip()
        wildcard = text.startswith("*.")
        host, port = split_host_port(text[2:] if wildcard else text)
        if wildcard and is_ip(host):
            raise ValueError(f"a wildcard cannot cover IP addresses: {entry!r}")
        return cls(host, wildcard, frozenset({port}) if port else DEFAULT_PORTS)

    def permits(self, host: str, port: int) -> bool:
        if port not in self.ports:
            return False
        if not self.wildcard:
            return host == self.host
        # "*.example.org" covers its subdomains, not the apex; IP literals only match exactly.
        return host.endswith("." + self.host) and not is_ip(host)


class Allowlist:
    """Which host:port pairs the sandbox may reach (exact names, `*.suffix`, optional port)."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.rules = tuple(AllowRule.parse(entry) for entry in entries)

    def permits(self, host: str, port: int) -> bool:
        try:
            host = normalize_host(host)
        except ValueError:
            return False
        return any(rule.permits(host, port) for rule in self.rules)


def embedded_ipv4(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one stands for (mapped, NAT64, 6to4), else the address itself."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if any(address in prefix for prefix in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour or address


def is_public(address: IPAddress) -> bool:
    """Globally routable (or a documentation address); not private, shared (CGNAT), unique- or
    site-local, reserved or otherwise special."""
    if any(address.version == network.version and address in network for network in _DOCUMENTATION):
        return True
    site_local = isinstance(address, ipaddress.IPv6Address) and address.is_site_local
    return address.is_global and not site_local


@dataclass(frozen=True)
class EgressPolicy:
    """What the egress proxy never connects to, whatever a repository's allowlist says.

    `denied`: (range, what it is) the platform must not be reached at: this node's addresses,
    its services, the cluster's ranges. Private ranges are refused unless `allow_private` or
    one of `private_allowed` covers them. `allow_loopback` is for tests with local upstreams."""

    denied: tuple[tuple[IPNetwork, str], ...] = ()
    allow_private: bool = False
    private_allowed: tuple[IPNetwork, ...] = ()
    allow_loopback: bool = False

    def reason(self, address: IPAddress) -> str | None:
        """Why `address` is out of bounds (a phrase: "this node's own address"), or None."""
        address = embedded_ipv4(address)
        if address.is_loopback:
            return None if self.allow_loopback else "a loopback address"
        if address.is_link_local:
            return "a link-local address"
        if address.is_multicast:
            return "a multicast address"
        if address.is_unspecified or address in _THIS_NETWORK:
            return "an unspecified address"
        for network, what in self.denied:
            if address.version == network.version and address in network:
                return what
        if self.allow_private or is_public(address):
            return None
        if any(address.version == network.version and address in network for network in self.private_allowed):
            return None
        return f"a private address ({PRIVATE_HINT})"

    def denying(self, networks: Iterable[IPNetwork], what: str) -> EgressPolicy:
        return replace(self, denied=(*self.denied, *((network, what) for network in networks)))

    def with_node_addresses(self) -> EgressPolicy:
        """Also deny every address of every interface of this node, as it is now."""
        return self.denying(node_addresses(), "this node's own address")

    @classmethod
    async def for_platform(cls, *, allow_private: bool = False, allow_cidrs: Iterable[str] = (),
                           deny_cidrs: Iterable[str] = (), environ: dict[str, str] | None = None,
                           resolve_timeout_s: float = 5) -> EgressPolicy:
        """The policy of a node of the platform: the addresses the service URLs in `environ`
        (default: this process's environment) resolve to now, the Kubernetes API, the operator's
        deny ranges; private ranges as the operator allows them. (The proxy adds the node's own.)"""
        environ = dict(os.environ if environ is None else environ)
        policy = cls(allow_private=allow_private, private_allowed=parse_networks(allow_cidrs))
        policy = policy.denying(parse_networks(deny_cidrs), "in a range the operator denies (FIXFLEET_EGRESS_DENY_CIDRS)")
        for name, host in service_hosts(environ):
            addresses = await resolve_quietly(host, resolve_timeout_s)
            policy = policy.denying((ipaddress.ip_network(a) for a in addresses), f"an address of a platform service ({name})")
        return policy


def node_addresses() -> list[IPNetwork]:
    """Every address of every network interface of this machine, as single-address ranges."""
    found = []
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(ValueError):
                    found.append(ipaddress.ip_network(address.address.partition("%")[0]))
    return found


def service_hosts(environ: dict[str, str]) -> list[tuple[str, str]]:
    """(setting, host) of each platform service named in `environ`: the URLs of SERVICE_URLS,
    the Ray head Ray itself joined, the Kubernetes API."""
    found = []
    for name in SERVICE_URLS:
        value = environ.get(name, "").strip()
        if value and value not in ("auto", "local"):
            host = _url_host(value if "://" in value else f"//{value}")
            if host:
                found.append((name, host))
    if environ.get("KUBERNETES_SERVICE_HOST"):
        found.append(("KUBERNETES_SERVICE_HOST", environ["KUBERNETES_SERVICE_HOST"].strip()))
    gcs = _ray_head()
    if gcs:
        found.append(("the Ray head this process joined", gcs))
    return found


def _url_host(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def _ray_head() -> str | None:
    """The host of the Ray cluster this process joined (only if Ray is loaded and connected)."""
    ray = sys.modules.get("ray")
    try:
        if ray is not None and ray.is_initialized():
            return _url_host(f"//{ray.get_runtime_context().gcs_address}")
    except Exception:  # noqa: BLE001 - no Ray context here: nothing to add
        return None
    return None


async def resolve_quietly(host: str, timeout_s: float) -> list[str]:
    """The addresses `host` resolves to now; none if it does not resolve (nothing to deny)."""
    try:
        async with asyncio.timeout(timeout_s):
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError, UnicodeError):
        log.debug("egress policy: %s does not resolve", host)
        return []
    return list(dict.fromkeys(str(info[4][0]).partition("%")[0] for info in infos))


# -- the egress proxy --------------------------------------------------------------------------


class Refusal(BaseModel):
    host: str
    port: int
    status: int
    reason: str
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class _Refused(Exception):
    def __init__(self, status: int, reason: str, host: str = "", port: int = 0) -> None:
        super().__init__(reason)
        self.status, self.reason, self.host, self.port = status, reason, host, port


@dataclass
class ProxyRequest:
    method: str
    host: str
    port: int
    version: str
    target: str  # origin-form path for plain HTTP, "" for CONNECT
    headers: list[tuple[str, str]]


def parse_head(head: bytes) -> ProxyRequest:
    """A CONNECT or absolute-form request head (up to and including the blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    if any(_CONTROL.search(line) for line in lines):
        raise _Refused(400, "control characters in the request head")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        raise _Refused(400, "malformed request line")
    method, target, version = parts
    headers = [_header(line) for line in lines[1:] if line]
    if method == "CONNECT":
        host, port = _authority(target)
        return ProxyRequest(method, host, port, version, "", headers)
    host, port, path = _absolute_url(target)
    return ProxyRequest(method, host, port, version, path, headers)


def _header(line: str) -> tuple[str, str]:
    name, colon, value = line.partition(":")
    if not colon or not _TOKEN.fullmatch(name):  # also rejects obsolete line folding
        raise _Refused(400, "malformed header line")
    return name, value.strip()


def _authority(target: str) -> tuple[str, int]:
    try:
        host, port = split_host_port(target)
    except ValueError:
        raise _Refused(400, "malformed CONNECT target") from None
    if port is None:
        raise _Refused(400, "CONNECT needs host:port", host)
    return host, port


def _absolute_url(target: str) -> tuple[str, int, str]:
    try:
        url = urlsplit(target)
        scheme, netloc = url.scheme.lower(), url.netloc
        port = 80 if url.port is None else url.port
        host = normalize_host(url.hostname or "")
    except ValueError:
        raise _Refused(400, "not a CONNECT or an absolute http:// request") from None
    if scheme == "https":
        raise _Refused(400, "https goes through CONNECT", host, 443)
    if scheme != "http" or "@" in netloc:
        raise _Refused(400, "not a CONNECT or an absolute http:// request")
    return host, port, (url.path or "/") + (f"?{url.query}" if url.query else "")


def named_by_connection(values: Iterable[str]) -> set[str]:
    """Headers a `Connection:` header declares hop-by-hop for this one connection."""
    return {token.strip().lower() for value in values for token in value.split(",")}


def origin_head(request: ProxyRequest) -> bytes:
    """The head to send upstream: origin-form target, our Host, one request per connection."""
    host = f"[{request.host}]" if ":" in request.host else request.host
    host = host if request.port == 80 else f"{host}:{request.port}"
    connection = named_by_connection(v for n, v in request.headers if n.lower() == "connection")
    # Transfer-Encoding stays: the body is piped through raw, framing and all.
    drop = (HOP_BY_HOP - {"transfer-encoding"}) | connection | {"host"}
    lines = [f"{request.method} {request.target} {request.version}", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in request.headers if name.lower() not in drop]
    lines += ["Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


class EgressProxy:
    """HTTP CONNECT / absolute-form HTTP proxy on a Unix socket, limited to an allowlist.

        async with EgressProxy(sock, ["pypi.org", "*.pythonhosted.org"], policy=policy) as proxy:
            ...  # HTTPS_PROXY=http://127.0.0.1:<bridged port> inside the sandbox
        proxy.refused  # what the sandbox tried and was denied

    `policy` says what is out of bounds whatever the allowlist says (EgressPolicy.for_platform);
    this node's own addresses are denied in any case.
    """

    def __init__(self, socket_path: Path, allow: Sequence[str], *, policy: EgressPolicy | None = None,
                 allow_loopback: bool = False, connect_timeout_s: float = 15, head_timeout_s: float = 10) -> None:
        self.socket_path = Path(socket_path)
        self.allowlist = Allowlist(allow)
        policy = policy or EgressPolicy()
        self.policy = replace(policy.with_node_addresses(), allow_loopback=policy.allow_loopback or allow_loopback)
        self.connect_timeout_s = connect_timeout_s
        self.head_timeout_s = head_timeout_s
        self.allowed: list[tuple[str, int]] = []
        self.refused: list[Refusal] = []
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[object]] = set()

    def __repr__(self) -> str:
        return (f"EgressProxy(socket={str(self.socket_path)!r}, rules={len(self.allowlist.rules)}, "
                f"open={len(self._connections)})")

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> EgressProxy:
        prepare_socket_path(self.socket_path)
        # The reader's limit bounds the request head (readuntil raises past it).
        self._server = await asyncio.start_unix_server(
            self._handle, path=str(self.socket_path), limit=MAX_HEAD_BYTES)
        log.info("egress proxy listening on %s", self.socket_path)
        return self

    async def close(self) -> None:
        """Stop listening and cut every open tunnel (3.11's wait_closed would not)."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()
        self.socket_path.unlink(missing_ok=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except _Refused as refused:
            self._refuse(writer, refused)
        except asyncio.CancelledError:
            # close() cut the connection: end quietly (3.11's stream callback would log the
            # cancellation of a connection task as an error with its traceback)
            pass
        except Exception as error:  # a bug must cost one connection, not the proxy
            log.exception("egress proxy: unexpected %s", type(error).__name__)
        finally:
            self._connections.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await self._read_head(reader)
        if head is None:
            return
        request = parse_head(head)
        if not self.allowlist.permits(request.host, request.port):
            raise _Refused(403, f"{request.host}:{request.port} is not on the egress allowlist",
                           request.host, request.port)
        upstream_reader, upstream_writer = await self._connect(request.host, request.port)
        self.allowed.append((request.host, request.port))
        log.info("egress %s %s:%d", request.method, request.host, request.port)
        try:
            if request.method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                upstream_writer.write(origin_head(request))
            await pipe(reader, writer, upstream_reader, upstream_writer)
        finally:
            upstream_writer.close()

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.head_timeout_s)
        except asyncio.IncompleteReadError as error:
            if not error.partial:
                return None  # connected and left (a probe): nothing to refuse
            raise _Refused(400, "connection closed inside the request head") from None
        except asyncio.LimitOverrunError:
            raise _Refused(431, f"request head over {MAX_HEAD_BYTES} bytes") from None
        except TimeoutError:
            raise _Refused(408, f"no request head within {self.head_timeout_s:g} s") from None

    async def _connect(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect to a checked address of `host`, never to the name (no DNS rebinding)."""
        addresses = await self._resolve(host, port)
        error: OSError | None = None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                for address in addresses:
                    try:
                        return await asyncio.open_connection(address, port, limit=_PIPE_CHUNK)
                    except OSError as failed:
                        error = failed
        except TimeoutError:
            raise _Refused(504, f"connecting to {host}:{port} timed out", host, port) from None
        detail = (error.strerror if error is not None else None) or type(error).__name__
        raise _Refused(502, f"cannot connect to {host}:{port}: {detail}", host, port)

    async def _resolve(self, host: str, port: int) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise _Refused(504, f"resolving {host} timed out", host, port) from None
        except OSError:
            raise _Refused(502, f"cannot resolve {host}", host, port) from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in addresses:  # every one: a name may not hide one bad address among good ones
            ip = ipaddress.ip_address(address.partition("%")[0])  # drop an IPv6 scope id
            reason = self.policy.reason(ip)
            if reason is not None:
                where = f"{host} is" if is_ip(host) else f"{host} resolves to {ip},"
                raise _Refused(403, f"{where} {reason}", host, port)
        return addresses

    def _refuse(self, writer: asyncio.StreamWriter, refused: _Refused) -> None:
        self.refused.append(Refusal(host=refused.host, port=refused.port, status=refused.status,
                                    reason=refused.reason))
        log.warning("egress refused %s:%d (%d): %s", refused.host or "-", refused.port,
                    refused.status, refused.reason)
        body = f"{refused.reason}\n".encode()
        writer.write(
            f"HTTP/1.1 {refused.status} {HTTPStatus(refused.status).phrase}\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode() + body)


async def pipe(a_reader: asyncio.StreamReader, a_writer: asyncio.StreamWriter,
               b_reader: asyncio.StreamReader, b_writer: asyncio.StreamWriter) -> None:
    """Copy both ways until either side closes; the caller closes both writers (which flushes)."""
    pumps = {asyncio.create_task(_pump(a_reader, b_writer)),
             asyncio.create_task(_pump(b_reader, a_writer))}
    try:
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(_PIPE_CHUNK):
            writer.write(chunk)
            await writer.drain()  # back-pressure: never buffer a whole download
    except ConnectionError:
        pass


def prepare_socket_path(path: Path) -> None:
    """Create the directory and clear a socket left by a crashed run (never a regular file).

    No chmod: the sandbox's root is our own uid mapped, so the default mode serves it."""
    if len(os.fsencode(path)) > _UNIX_PATH_MAX:
        raise ValueError(f"Unix socket path longer than {_UNIX_PATH_MAX} bytes: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    path.unlink()
