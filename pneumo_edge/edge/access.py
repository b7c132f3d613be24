"""Who may ask `pneumo-edge serve` what, from where: the rules for a box on a hospital network.

- Bind policy (`check_bind`): loopback needs nothing; any other address needs TLS (--certfile/--keyfile) or an
  explicit --insecure-http, and at least one API token.
- `Gate`, an ASGI middleware in front of the application:
  - Host allowlist: the Host header must name the bind address, loopback, or a name given with --allow-host
    (a DNS-rebinding page names its own host and is refused);
  - Origin check on state-changing requests: a browser that says it comes from another site is refused, so a
    web page a user opens elsewhere cannot post X-rays to the box;
  - bearer tokens (when a token file is configured) on every path but the policy's `open_paths` (the page and
    what it loads before it can ask for the token; serve.OPEN_ROUTES says why each is open), so /v1/, /metrics
    and any path not served alike need one; compared in constant time; a failure is 401 and one log line that
    names the client and never the token;
  - a per-client cap on requests in progress (429 beyond it), counted from the headers' arrival, so that one
    address cannot hold every connection with slow uploads.
Every refusal is the service's usual one-line JSON error.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import PneumoEdgeError

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
log = logging.getLogger("pneumo_edge.serve")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, tls: bool, insecure_http: bool, tokens: int | None) -> list[str]:
    """Refuse an unsafe network bind (PneumoEdgeError); return the warnings to print at this start.

    `tokens`: how many the token file holds (None: no token file, only allowed on loopback)."""
    if is_loopback(host):
        if tokens == 0:
            raise PneumoEdgeError("the token file holds no API token, so every request would be refused: "
                                  "create one with `pneumo-edge token create NAME`")
        return []
    if not tls and not insecure_http:
        raise PneumoEdgeError(f"refusing to serve on {host} without TLS: give --certfile and --keyfile, or "
                              "--insecure-http on a network you trust (tokens and images would cross it in clear)")
    if not tokens:
        raise PneumoEdgeError(f"refusing to serve on {host} without an API token: create one with "
                              "`pneumo-edge token create NAME` (clients send it as 'Authorization: Bearer ...')")
    warnings = [f"serving on {host}: only clients with an API token are answered"]
    if not tls:
        warnings.append(f"warning: serving on {host} over plain HTTP (--insecure-http): anyone on the network "
                        "path can read the X-rays, the answers and the tokens")
    return warnings


def bind_names(host: str) -> tuple[str, ...]:
    """The Host names a bind answers to by default: the address itself, and the machine's names for a wildcard."""
    if host in ("0.0.0.0", "::", ""):
        names = {socket.gethostname(), socket.getfqdn()}
        return tuple(sorted(n.lower() for n in names if n))
    return (host.lower(),)


def _host_only(value: str) -> str:
    """'name:8000' -> 'name', '[::1]:8000' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


@dataclass(frozen=True)
class AccessPolicy:
    hosts: tuple[str, ...] = LOOPBACK_NAMES  # Host header names accepted
    per_client: int = 4  # requests in progress from one address at once
    tokens: object | None = None  # a tokens.TokenStore: when set, bearer tokens required beyond open_paths
    open_paths: frozenset[str] = frozenset()  # exact paths answered without a token


class Gate:
    """ASGI middleware applying an AccessPolicy to every HTTP request."""

    def __init__(self, app, policy: AccessPolicy):
        self.app, self.policy = app, policy
        self.hosts = {h.lower() for h in (*LOOPBACK_NAMES, *policy.hosts)}
        self.in_progress: dict[str, int] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        client = (scope.get("client") or ("unknown", 0))[0]
        refusal = self._refuse(scope, headers, client)
        if refusal:
            return await _send_error(send, *refusal)
        if self.in_progress.get(client, 0) >= self.policy.per_client:
            return await _send_error(send, 429, f"too many requests in progress from {client} "
                                                f"(at most {self.policy.per_client}); retry shortly",
                                     {"retry-after": "1"})
        self.in_progress[client] = self.in_progress.get(client, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress[client] -= 1
            if not self.in_progress[client]:
                del self.in_progress[client]

    def _refuse(self, scope, headers: dict, client: str) -> tuple | None:
        host = _host_only(headers.get("host", ""))
        if host not in self.hosts:
            log.warning("refused %s: Host '%s' is not served here", client, host[:100])
            return 421, "this server does not answer to that Host name (see serve --allow-host)", {}
        origin = headers.get("origin")
        if scope["method"] not in SAFE_METHODS and origin is not None and not self._same_origin(scope, origin):
            log.warning("refused %s: %s %s from another origin", client, scope["method"], scope["path"])
            return 403, "cross-origin request refused: use the page this server serves", {}
        if self.policy.tokens is not None and scope["path"] not in self.policy.open_paths:
            auth = headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                log.warning("refused %s: %s %s without an API token", client, scope["method"], scope["path"])
                return 401, "an API token is required: send 'Authorization: Bearer <token>'", \
                    {"www-authenticate": "Bearer"}
            if self.policy.tokens.check(token.strip()) is None:
                log.warning("refused %s: %s %s with an unknown or revoked API token", client, scope["method"],
                            scope["path"])
                return 401, "unknown or revoked API token", {"www-authenticate": 'Bearer error="invalid_token"'}
        return None

    def _same_origin(self, scope, origin: str) -> bool:
        try:
            o = urlsplit(origin)
            port = o.port or (443 if o.scheme == "https" else 80)
        except ValueError:
            return False
        server_port = (scope.get("server") or (None, None))[1]
        return (o.scheme == scope.get("scheme", "http") and (o.hostname or "") in self.hosts
                and (server_port is None or port == server_port))


async def _send_error(send, status: int, reason: str, headers: dict) -> None:
    body = json.dumps({"error": reason, "status": status}).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"), *((k.encode(), v.encode()) for k, v in headers.items())]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})
