"""The device agent (`nas device serve`); its client is `remote.RemoteMeasurer`.

The agent runs on the target device (standard library HTTP, JSON only) and measures the layers or
architectures a workstation sends it with a `LocalMeasurer`. Requests carry specs as JSON, never
pickles or code: each item goes through `LayerShape.from_dict` / `ArchSpec.from_dict`, which
validate every field, and is checked against size caps (`AgentLimits`) before anything is built.

Endpoints (all need `Authorization: Bearer <token>`; errors answer `{"error": "<reason>"}`):

    GET  /v1/info            {"agent_version", "metadata": measurer metadata, "limits": {...}}
    POST /v1/measure/layers  {"layers": [LayerShape.to_dict(), ...], "settings": {...}?}
    POST /v1/measure/archs   {"archs": [ArchSpec.to_dict(), ...], "settings": {...}?}
                             -> {"measurements": [Measurement.to_dict(), ...], "metadata": {...}}

Status codes: 400 bad JSON/spec/settings, 401 token, 404 path, 405 method, 411 no Content-Length,
413 body too large, 415 not application/json, 422 over a size or work cap, 503 busy too long.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import secrets
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from predictors.latency.builder import LocalMeasurer

logger = logging.getLogger(__name__)
from predictors.latency.protocol import (
    AGENT_VERSION,
    DEFAULT_HOST,
    DEFAULT_PORT,
    JSON_TYPE,
    KINDS,
    ROUTES,
    AgentLimits,
    RequestError,
    parse_items,
    parse_settings,
    runs_per_item,
)
from search_spaces.errors import OptionError

# ---- the agent -------------------------------------------------------------------------------------


class DeviceAgent:
    """Transport-free core: validates requests and runs one measurement at a time."""

    def __init__(self, measurer: LocalMeasurer, limits: AgentLimits, busy_timeout_s: float = 600.0) -> None:
        self.measurer, self.limits, self.busy_timeout_s = measurer, limits, busy_timeout_s
        # concurrent timings would disturb each other (and share process-global thread/gc state)
        self._lock = threading.Lock()
        self.device = measurer.metadata()  # once: cheap to answer, and constant while serving

    def info(self) -> dict[str, Any]:
        return {"agent_version": AGENT_VERSION, "metadata": self.device, "limits": self.limits.to_dict()}

    def measure(self, kind: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise RequestError(400, f"body must be a JSON object with {kind!r}, got {type(body).__name__}")
        unknown = sorted(set(body) - {kind, "settings"})
        if unknown:
            raise RequestError(400, f"unknown field(s) {unknown}; allowed: [{kind!r}, 'settings']")
        settings = parse_settings(body.get("settings"), self.measurer.settings, self.limits)
        items = parse_items(kind, body.get(kind), self.limits)
        runs = len(items) * runs_per_item(settings)
        if runs > self.limits.max_runs_per_request:
            raise RequestError(422, f"{len(items)} {kind} x {runs_per_item(settings)} runs each = {runs} runs "
                               f"exceed max_runs_per_request={self.limits.max_runs_per_request}")
        measurer = LocalMeasurer(self.measurer.backend, settings=settings)
        if not self._lock.acquire(timeout=self.busy_timeout_s):
            raise RequestError(503, f"agent busy: another measurement held it for over {self.busy_timeout_s:.0f} s")
        try:
            start = time.perf_counter()
            try:
                if kind == "layers":
                    results = measurer.measure_layers(items)  # type: ignore[arg-type]
                else:
                    results = measurer.measure_archs(items)  # type: ignore[arg-type]
            except (ValueError, TypeError) as error:
                raise RequestError(422, f"cannot measure {kind}: {error}") from error
            logger.info("measured %d %s in %.2f s", len(items), kind, time.perf_counter() - start)
        finally:
            self._lock.release()
        return {"measurements": [m.to_dict() for m in results],
                "metadata": {**self.device, "protocol": settings.to_dict()}}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = f"hwnas-agent/{AGENT_VERSION}"
    sys_version = ""  # no Python version in the Server header
    timeout = 60  # socket timeout: a stalled client cannot hold a thread forever

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET  # wrong ones get 405 instead of http.server's 501

    def log_message(self, format: str, *args: Any) -> None:  # the request line; headers (token) never
        logger.info("%s %s", self.address_string(), format % args)

    def _dispatch(self) -> None:
        self._body_read = False
        agent = self.server.agent
        try:
            self._authorise()
            path = urllib.parse.urlsplit(self.path).path
            if path not in ROUTES:
                raise RequestError(404, f"unknown path {path!r}; endpoints: {', '.join(ROUTES)}")
            if self.command != ROUTES[path]:
                raise RequestError(405, f"{self.command} not allowed on {path}; use {ROUTES[path]}",
                                   {"Allow": ROUTES[path]})
            payload = agent.info() if path == "/v1/info" else agent.measure(KINDS[path], self._read_json())
            self._reply(200, payload)
        except RequestError as error:
            logger.warning("refused %s %s from %s: %d %s", self.command, self.path, self.address_string(),
                           error.status, error.reason)
            self._drain()
            self._reply(error.status, {"error": error.reason}, error.headers)
        except Exception as error:  # the client gets a reason; the agent keeps serving
            logger.exception("failed %s %s", self.command, self.path)
            self._reply(500, {"error": f"agent failed: {type(error).__name__}: {error}"})

    def _authorise(self) -> None:
        try:
            self._check_token()
        except RequestError:
            self.server.record_auth(self.client_address[0], ok=False)
            raise
        self.server.record_auth(self.client_address[0], ok=True)

    def _check_token(self) -> None:
        header = self.headers.get("Authorization")
        if not header:
            raise RequestError(401, "missing token: send the header 'Authorization: Bearer <token>'")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer":
            raise RequestError(401, f"missing token: Authorization scheme {scheme!r} is not 'Bearer'")
        if not hmac.compare_digest(given.strip().encode("utf-8", "replace"), self.server.token.encode()):
            raise RequestError(401, "bad token")

    def _content_length(self) -> int | None:
        raw = self.headers.get("Content-Length")
        if raw is not None and not raw.strip().isdigit():
            raise RequestError(400, f"invalid Content-Length {raw!r}")
        return None if raw is None else int(raw)

    def _read_json(self) -> Any:
        limit = self.server.agent.limits.max_body_bytes
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != JSON_TYPE:
            raise RequestError(415, f"Content-Type must be {JSON_TYPE}, got {content_type or 'none'!r}")
        length = self._content_length()
        if length is None:  # chunked bodies are refused too: the size must be known before reading
            raise RequestError(411, "Content-Length required")
        if length > limit:  # decided from the header alone: the body is never read
            raise RequestError(413, f"body of {length} bytes exceeds max_body_bytes={limit}")
        self._body_read = True  # from here on, never try to read it again
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            raise RequestError(408, f"body of {length} bytes not received within {self.timeout} s") from None
        try:
            # parse_constant refuses NaN/Infinity, which are not JSON
            return json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as error:
            raise RequestError(400, f"body is not valid UTF-8 JSON: {error}") from None

    def _drain(self) -> None:
        # Reading a small unread body before answering avoids a TCP reset that could eat the reply.
        try:
            length = self._content_length()
        except RequestError:
            return
        if not self._body_read and length and length <= self.server.agent.limits.max_body_bytes:
            try:
                self.rfile.read(length)
            except OSError:
                pass  # a client that lies about its length still gets the answer

    def _reply(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", JSON_TYPE)
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            logger.info("client went away before the answer to %s", self.path)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


class _Server(ThreadingHTTPServer):  # daemon threads: an in-flight measurement never blocks exit
    """Bounded before authentication: at most `MAX_CONNECTIONS` handler threads (a connection
    beyond them is closed at once, no thread made), and a client whose token failed
    `FAILURES_BEFORE_BACKOFF` times in a row is cut off for 2, 4, ... up to 60 s (its connections
    are closed unread), so guessing tokens or holding idle sockets costs the agent nothing."""

    MAX_CONNECTIONS = 8
    FAILURES_BEFORE_BACKOFF = 5
    MAX_BACKOFF_S = 60.0
    HANDSHAKE_TIMEOUT_S = 10.0

    def __init__(self, address: tuple[str, int], agent: DeviceAgent, token: str) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.agent, self.token = agent, token
        self._slots = threading.BoundedSemaphore(self.MAX_CONNECTIONS)
        self._failures: dict[str, tuple[int, float]] = {}  # client host -> (failures in a row, blocked until)
        self._failures_lock = threading.Lock()
        super().__init__(address, _Handler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self._failures_lock:
            _, until = self._failures.get(client_address[0], (0, 0.0))
        if time.monotonic() < until:
            return False
        if not self._slots.acquire(blocking=False):
            logger.warning("refused a connection from %s: %d connections open", client_address[0],
                           self.MAX_CONNECTIONS)
            return False
        return True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            if isinstance(request, ssl.SSLSocket) and not self._handshake(request, client_address):
                return
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _handshake(self, request: ssl.SSLSocket, client_address: Any) -> bool:
        """TLS handshake here, in the connection's own (bounded) thread, not in accept(): a client
        that stalls or speaks plain HTTP holds one slot for at most HANDSHAKE_TIMEOUT_S."""
        try:
            request.settimeout(self.HANDSHAKE_TIMEOUT_S)
            request.do_handshake()
            request.settimeout(None)
            return True
        except (ssl.SSLError, OSError) as error:
            logger.info("TLS handshake with %s failed: %s", client_address[0], error)
            self.shutdown_request(request)
            return False

    def record_auth(self, host: str, ok: bool) -> None:
        with self._failures_lock:
            if ok:
                self._failures.pop(host, None)
                return
            failures = self._failures.get(host, (0, 0.0))[0] + 1
            until = 0.0
            if failures >= self.FAILURES_BEFORE_BACKOFF:
                delay = min(self.MAX_BACKOFF_S, 2.0 ** (failures - self.FAILURES_BEFORE_BACKOFF + 1))
                until = time.monotonic() + delay
                logger.warning("%s: %d bad tokens in a row; ignoring it for %.0f s", host, failures, delay)
            self._failures[host] = (failures, until)


class AgentServer:
    """A bound agent: `.url`, `.token`; `serve_forever()` blocks (the CLI), `start()` runs it in a
    background thread (tests), `shutdown()` stops either."""

    def __init__(self, httpd: _Server, token_generated: bool) -> None:
        self.httpd, self.token, self.token_generated = httpd, httpd.token, token_generated
        self.host, self.port = str(httpd.server_address[0]), int(httpd.server_address[1])
        self.tls = isinstance(httpd.socket, ssl.SSLSocket)
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://[{self.host}]:{self.port}" if ":" in self.host else f"{scheme}://{self.host}:{self.port}"
        self._thread: threading.Thread | None = None
        self._serving = False  # httpd.shutdown() would wait forever on a loop that never ran

    def start(self) -> AgentServer:
        self._serving = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="device-agent", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._serving = True
        try:
            self.httpd.serve_forever()
        except KeyboardInterrupt:
            logger.info("interrupted; shutting down")
        finally:
            self._serving = False
            self.httpd.server_close()

    def shutdown(self) -> None:
        if self._serving:
            self.httpd.shutdown()
            self._serving = False
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> AgentServer:
        return self

    def __exit__(self, *_: Any) -> None:
        self.shutdown()


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_context(certfile: str | os.PathLike, keyfile: str | os.PathLike | None) -> ssl.SSLContext:
    """A server context of TLS 1.2 or later from a PEM certificate (chain) and its key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as error:
        raise OptionError(f"--cert {certfile} / --key {keyfile}: not a usable PEM certificate and key "
                          f"({getattr(error, 'strerror', None) or error})") from None
    return context


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, token: str | None = None,
          measurer: LocalMeasurer | None = None, *, max_body: int | None = None,
          limits: AgentLimits | None = None, busy_timeout_s: float = 600.0,
          background: bool = True, certfile: str | os.PathLike | None = None,
          keyfile: str | os.PathLike | None = None) -> AgentServer:
    """Bind an agent (port 0: any free port); started in a background thread unless `background`
    is False, in which case call `.serve_forever()`. No token: a random one (see `.token`). With
    `certfile` (and `keyfile`, unless the key is in it) the agent speaks HTTPS only."""
    limits = limits or AgentLimits()
    if max_body is not None:
        limits = replace(limits, max_body_bytes=max_body)
    generated = token is None
    token = secrets.token_urlsafe(24) if token is None else token
    if not token or not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise OptionError("token (--token / NAS_DEVICE_TOKEN) must be non-empty printable ASCII without spaces "
                          "(it travels in a header)")
    if len(token) < 16:
        logger.warning("the token has only %d characters; a short token is easy to guess", len(token))
    context = tls_context(certfile, keyfile) if certfile is not None else None
    if not _is_loopback(host) and context is None:
        logger.warning("binding %s: the token is the only protection and traffic is plain HTTP (the token is "
                       "readable on the network); use --cert/--key, a trusted network or an SSH tunnel to "
                       "127.0.0.1", host)
    agent = DeviceAgent(measurer or LocalMeasurer(), limits, busy_timeout_s)
    httpd = _Server((host, port), agent, token)
    if context is not None:
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
    server = AgentServer(httpd, generated)
    logger.info("device agent %s at %s (backend %s, %s thread(s))", AGENT_VERSION, server.url,
                agent.device.get("backend"), agent.device.get("threads"))
    return server.start() if background else server
