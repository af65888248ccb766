"""The device agent bounds what unauthenticated clients can cost it: a fixed number of open
connections (no thread per idle socket beyond it) and a growing pause for a client that keeps
sending bad tokens."""

from __future__ import annotations

import http.client
import socket
import time
from typing import Any

import pytest

from predictors.latency.agent import serve
from predictors.latency.builder import LocalMeasurer, MeasureSettings

TOKEN = "limits-token-0123456789abcdef"


@pytest.fixture()
def agent() -> Any:
    server = serve("127.0.0.1", 0, TOKEN, LocalMeasurer("torch", threads=1, settings=MeasureSettings(1, 3, 2)))
    yield server
    server.shutdown()


def info_status(server: Any, token: str = TOKEN) -> int:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        connection.request("GET", "/v1/info", headers={"Authorization": f"Bearer {token}"})
        return connection.getresponse().status
    finally:
        connection.close()


def test_bad_tokens_in_a_row_make_the_agent_ignore_the_client_for_a_while(agent: Any) -> None:
    agent.httpd.FAILURES_BEFORE_BACKOFF = 2  # first pause: 2 s
    assert [info_status(agent, "wrong"), info_status(agent, "wrong")] == [401, 401]
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        info_status(agent)  # even the right token: the connection is closed unread
    time.sleep(2.2)
    assert info_status(agent) == 200
    assert info_status(agent, "wrong") == 401  # the success reset the count: one failure, no pause
    assert info_status(agent) == 200


def test_connections_beyond_the_bound_are_closed_without_a_thread(agent: Any) -> None:
    idle = [socket.create_connection((agent.host, agent.port), timeout=10)
            for _ in range(agent.httpd.MAX_CONNECTIONS)]
    try:
        time.sleep(0.3)  # let the server accept them all
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            info_status(agent)
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.3)  # their handler threads see EOF and give their slots back
    assert info_status(agent) == 200
