"""`nas device serve --cert/--key`: the agent speaks HTTPS only, the client checks the agent's
certificate (system trust or NAS_DEVICE_CA), and a plain-HTTP or stalled client costs one bounded
handshake in its own thread. Certificates come from the `openssl` command (skipped without it)."""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from predictors.latency.agent import serve
from predictors.latency.builder import LocalMeasurer, MeasureSettings
from predictors.latency.remote import RemoteAccessError, RemoteMeasurer
from search_spaces.errors import OptionError

TOKEN = "tls-token-0123456789abcdef"
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "agent.pem", folder / "agent.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture()
def agent(certificate: tuple[Path, Path]) -> Any:
    cert, key = certificate
    server = serve("127.0.0.1", 0, TOKEN, LocalMeasurer("torch", threads=1, settings=MeasureSettings(1, 3, 2)),
                   certfile=cert, keyfile=key)
    yield server
    server.shutdown()


def test_the_agent_serves_https_to_a_client_that_trusts_its_certificate(agent: Any, certificate: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert agent.tls and agent.url.startswith("https://127.0.0.1:")
    assert RemoteMeasurer(agent.url, TOKEN, cafile=str(certificate[0])).info()["agent_version"]
    monkeypatch.setenv("NAS_DEVICE_CA", str(certificate[0]))  # what the CLI commands read
    assert RemoteMeasurer(agent.url, TOKEN).info()["agent_version"]


def test_a_client_that_does_not_trust_the_certificate_is_refused_before_sending_the_token(agent: Any) -> None:
    with pytest.raises(RemoteAccessError, match="CERTIFICATE_VERIFY_FAILED"):
        RemoteMeasurer(agent.url, TOKEN).info()


def test_plain_http_and_stalled_clients_cost_one_bounded_handshake(agent: Any, certificate: Any) -> None:
    agent.httpd.HANDSHAKE_TIMEOUT_S = 0.5
    plain = http.client.HTTPConnection(agent.host, agent.port, timeout=10)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError, http.client.BadStatusLine)):
        plain.request("GET", "/v1/info", headers={"Authorization": f"Bearer {TOKEN}"})
        plain.getresponse()
    stalled = socket.create_connection((agent.host, agent.port), timeout=10)  # never says hello
    try:
        # the agent still answers others meanwhile: the handshake waits in the stalled one's thread
        assert RemoteMeasurer(agent.url, TOKEN, cafile=str(certificate[0])).info()["agent_version"]
        assert stalled.recv(1) == b""  # closed after HANDSHAKE_TIMEOUT_S
    finally:
        stalled.close()


def test_a_bad_certificate_file_is_one_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate\n")
    with pytest.raises(OptionError, match="--cert .*bogus.pem"):
        serve("127.0.0.1", 0, TOKEN, certfile=bogus, background=False)
    with pytest.raises(OptionError, match="NAS_DEVICE_CA=.*bogus.pem"):
        RemoteMeasurer("https://127.0.0.1:1", TOKEN, cafile=str(bogus))
