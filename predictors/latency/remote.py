"""`RemoteMeasurer`: builds latency tables through a device agent (`agent.py`) over HTTP."""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields
from typing import Any

from predictors.latency.builder import MeasureSettings
from predictors.latency.measure import Measurement
from search_spaces.build import LayerShape
from search_spaces.spec import ArchSpec

logger = logging.getLogger(__name__)
from predictors.latency.protocol import (
    JSON_TYPE,
    AgentLimits,
    RemoteAccessError,
    RemoteError,
    runs_per_item,
)
from search_spaces.errors import OptionError

# ---- the client -------------------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib would forward the Authorization header to wherever a redirect points


class RemoteMeasurer:
    """A `Measurer` (see `builder.py`) that sends layers to a device agent over HTTP."""

    MAX_ANSWER_BYTES = 64 * 2**20

    def __init__(self, url: str, token: str, *, settings: MeasureSettings | None = None,
                 timeout_s: float = 900.0, info_timeout_s: float = 30.0, cafile: str | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise OptionError(f"device url (--device) {url!r}: expected http://HOST:PORT (or https://...)")
        self.url = url.rstrip("/")
        self._token = token
        self.settings, self.timeout_s, self.info_timeout_s = settings, timeout_s, info_timeout_s
        # no proxies (a bearer token should not cross one in plain HTTP), no redirects (see above)
        handlers: list[Any] = [urllib.request.ProxyHandler({}), _NoRedirect()]
        if parts.scheme == "https":  # the agent's own certificate (NAS_DEVICE_CA), else the system's trust
            handlers.append(urllib.request.HTTPSHandler(context=_client_context(cafile or os.environ.get(CA_ENV))))
        self._opener = urllib.request.build_opener(*handlers)
        self._info: dict[str, Any] | None = None

    def __repr__(self) -> str:  # never the token
        return f"RemoteMeasurer({self.url!r})"

    def info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = self._call("GET", "/v1/info", None, self.info_timeout_s)
        return self._info

    @property
    def limits(self) -> AgentLimits:
        return AgentLimits.from_dict(self.info().get("limits", {}))

    def metadata(self) -> dict[str, Any]:
        info = self.info()
        meta = dict(info.get("metadata", {}))
        if self.settings is not None:
            meta["protocol"] = self.settings.to_dict()
        return {**meta, "remote_url": self.url, "agent_version": info.get("agent_version")}

    def measure_layers(self, layers: Sequence[LayerShape],
                       progress: Callable[[int], None] | None = None) -> list[Measurement]:
        return self._measure("layers", [layer.to_dict() for layer in layers], progress)

    def measure_archs(self, archs: Sequence[ArchSpec],
                      progress: Callable[[int], None] | None = None) -> list[Measurement]:
        return self._measure("archs", [arch.to_dict() for arch in archs], progress)

    def _measure(self, kind: str, items: list[dict[str, Any]],
                 progress: Callable[[int], None] | None) -> list[Measurement]:
        out: list[Measurement] = []
        for batch in self._batches(kind, items):
            body: dict[str, Any] = {kind: batch}
            if self.settings is not None:
                body["settings"] = self.settings.to_dict()
            answer = self._call("POST", f"/v1/measure/{kind}", body, self.timeout_s)
            try:
                measured = [Measurement.from_dict(m) for m in answer["measurements"]]
                if len(measured) != len(batch):
                    raise ValueError(f"{len(measured)} measurements for {len(batch)} {kind}")
            except (KeyError, TypeError, ValueError) as error:
                raise RemoteError(f"agent at {self.url} sent a malformed answer: {error}") from None
            out += measured
            if progress is not None:
                progress(len(out))
        return out

    def _batches(self, kind: str, items: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
        """Consecutive runs of items within the agent's item, work and body-size limits."""
        limits = self.limits
        protocol = self.settings or _settings_from(self.info().get("metadata", {}).get("protocol"))
        count = min(limits.max_layers if kind == "layers" else limits.max_archs,
                    max(1, limits.max_runs_per_request // runs_per_item(protocol)))
        envelope = len(_dumps({kind: [], **({"settings": protocol.to_dict()} if self.settings else {})}))
        batch: list[dict[str, Any]] = []
        size = envelope
        for index, item in enumerate(items):
            item_size = len(_dumps(item)) + 1  # + the separating comma
            if envelope + item_size > limits.max_body_bytes:
                raise RemoteError(f"{kind}[{index}] alone encodes to {item_size} bytes, over the agent's "
                                  f"max_body_bytes={limits.max_body_bytes} at {self.url}")
            if batch and (len(batch) == count or size + item_size > limits.max_body_bytes):
                yield batch
                batch, size = [], envelope
            batch.append(item)
            size += item_size
        if batch:
            yield batch

    def _call(self, method: str, path: str, body: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
        data = None if body is None else _dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        request.add_header("Authorization", f"Bearer {self._token}")
        if data is not None:
            request.add_header("Content-Type", JSON_TYPE)
        try:
            with self._opener.open(request, timeout=timeout) as response:
                text = response.read(self.MAX_ANSWER_BYTES)
        except urllib.error.HTTPError as error:
            raw = error.read(4096).decode("utf-8", "replace")
            try:
                reason = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                reason = raw.strip()[:300] or error.reason
            refused = RemoteAccessError if error.code in (401, 403) else RemoteError  # 401/403: the token
            raise refused(f"agent at {self.url} refused {method} {path}: {error.code} {reason}") from None
        except (TimeoutError, socket.timeout):
            raise RemoteError(f"agent at {self.url} did not answer {method} {path} within {timeout:g} s") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise RemoteAccessError(f"agent at {self.url} unreachable: {reason}") from None
        try:
            answer = json.loads(text)
        except ValueError as error:
            raise RemoteError(f"agent at {self.url} answered {path} with invalid JSON: {error}") from None
        if not isinstance(answer, dict):
            raise RemoteError(f"agent at {self.url} answered {path} with {type(answer).__name__}, not an object")
        return answer


CA_ENV = "NAS_DEVICE_CA"  # a PEM file trusted for an https agent (its self-signed certificate)


def _client_context(cafile: str | None) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as error:
        raise OptionError(f"{CA_ENV}={cafile}: not a readable PEM certificate "
                          f"({getattr(error, 'strerror', None) or error})") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _settings_from(data: Any) -> MeasureSettings:
    names = {f.name for f in fields(MeasureSettings)}
    return MeasureSettings(**{k: v for k, v in (data or {}).items() if k in names})


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))
