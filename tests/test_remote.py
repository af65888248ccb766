"""The device agent and RemoteMeasurer over loopback: a remote table equals a local one, and every
malformed, unauthorised or oversized request is refused with the right status and a reason."""

from __future__ import annotations

import http.client
import inspect
import json
import pickle
import socket
import threading
import time
from typing import Any

import pytest
import typer
from tiny_space import TinySpace
from typer.testing import CliRunner

from nas.commands import device
from predictors.latency import agent
from predictors.latency.builder import LocalMeasurer, MeasureSettings, build_table
from predictors.latency.measure import Measurement
from predictors.latency.agent import serve
from predictors.latency.protocol import AGENT_VERSION, AgentLimits, RemoteError, op_size
from predictors.latency.remote import RemoteMeasurer
from search_spaces.build import LayerShape, build_layer, layer_shapes

TOKEN = "test-token-0123456789abcdef"
FAST = MeasureSettings(warmup=1, blocks=3, block_runs=2, retries=0)
UNPICKLED: list[bool] = []


def _mark_unpickled() -> None:
    UNPICKLED.append(True)  # what a pickle payload would run if the agent ever unpickled it


class Evil:
    def __reduce__(self) -> tuple[Any, tuple]:
        return (_mark_unpickled, ())


@pytest.fixture(scope="module")
def agent() -> Any:
    server = serve("127.0.0.1", 0, TOKEN, LocalMeasurer("torch", threads=1, settings=FAST))
    yield server
    server.shutdown()


def layer(index: int = 1, **part: Any) -> dict[str, Any]:
    data = layer_shapes(TinySpace().decode([0, 0, 0]))[index].to_dict()
    data["part"].update(part)
    return data


def request(server: Any, method: str, path: str, body: bytes | None = None, *, token: str | None = TOKEN,
            content_type: str = "application/json") -> tuple[int, dict[str, Any], http.client.HTTPResponse]:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    payload = json.loads(response.read())
    connection.close()
    return response.status, payload, response


def post(server: Any, path: str, data: Any, **kw: Any) -> tuple[int, dict[str, Any]]:
    status, payload, _ = request(server, "POST", path, json.dumps(data).encode(), **kw)
    return status, payload


def raw(server: Any, head: str) -> tuple[int, dict[str, Any], float]:
    """Send only a request head (no body) and read the answer: what a client that has not sent
    its body yet would get."""
    start = time.perf_counter()
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode())
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read()), time.perf_counter() - start


# ---- working paths --------------------------------------------------------------------------------


def test_info_reports_device_agent_version_and_limits(agent: Any) -> None:
    status, info, _ = request(agent, "GET", "/v1/info")
    assert status == 200
    assert info["agent_version"] == AGENT_VERSION
    assert info["metadata"]["backend"] == "torch" and info["metadata"]["threads"] == 1
    assert info["metadata"]["protocol"] == FAST.to_dict()
    assert info["limits"] == AgentLimits().to_dict()


def test_remote_table_has_exactly_the_local_keys(agent: Any, tmp_path: Any) -> None:
    space = TinySpace()
    local = build_table(space, LocalMeasurer("torch", threads=1, settings=FAST), tmp_path / "local.json")
    client = RemoteMeasurer(agent.url, TOKEN)
    table = build_table(space, client, tmp_path / "remote.json")
    assert set(table.entries) == set(local.entries) == {op.signature for op in space.candidate_ops()}
    assert all(m.median_ms > 0 and m.runs == FAST.blocks * FAST.block_runs for m in table.entries.values())
    assert table.metadata["remote_url"] == agent.url
    assert table.metadata["device"] == local.metadata["device"]  # the agent's host, reported by it
    assert table.metadata["backend"] == "torch" and table.metadata["protocol"] == FAST.to_dict()


def test_archs_are_measured_and_batches_respect_the_agents_limits() -> None:
    limits = AgentLimits(max_layers=3, max_archs=1)
    with serve("127.0.0.1", 0, TOKEN, LocalMeasurer("torch", settings=FAST), limits=limits) as server:
        client = RemoteMeasurer(server.url, TOKEN, settings=MeasureSettings(warmup=0, blocks=1, block_runs=1))
        done: list[int] = []
        layers = [shape for arch in TinySpace().all_archs()[:2] for shape in layer_shapes(arch)][:7]
        assert len(client.measure_layers(layers, progress=done.append)) == 7
        assert done == [3, 6, 7]  # three requests of at most max_layers
        archs = TinySpace().all_archs()[:2]
        measured = client.measure_archs(archs, progress=done.append)
        assert len(measured) == 2 and all(m.median_ms > 0 and m.runs == 1 for m in measured)
        assert done[-2:] == [1, 2]


def test_measurements_are_serialised(agent: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    spans: list[tuple[float, float]] = []

    def slow(self: LocalMeasurer, layers: list[LayerShape], progress: Any = None) -> list[Measurement]:
        start = time.perf_counter()
        time.sleep(0.2)
        spans.append((start, time.perf_counter()))
        return [Measurement(1.0, 1.0, 1.0, 1) for _ in layers]

    monkeypatch.setattr(LocalMeasurer, "measure_layers", slow)
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(post(agent, "/v1/measure/layers",
                                                                    {"layers": [layer()]})[0]))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200, 200]
    (a_start, a_end), (b_start, b_end) = sorted(spans)
    assert a_end <= b_start  # the second measurement began only after the first ended


def test_op_size_counts_exactly_what_build_layer_builds() -> None:
    shape = LayerShape.from_dict(layer(1, se_ratio=0.25))
    params, macs = op_size(shape)
    assert params == sum(p.numel() for p in build_layer(shape).parameters())
    # no expansion (e1); 3x3 depthwise, stride 2: 8x8 -> 4x4 on 8 ch; SE 8 -> 2 -> 8; 1x1 project 8 -> 16
    assert macs == 4 * 4 * 8 * 9 + 2 * 8 * 2 + 4 * 4 * 8 * 16


# ---- refusals -------------------------------------------------------------------------------------


def test_missing_and_bad_tokens_get_401(agent: Any) -> None:
    status, body, response = request(agent, "GET", "/v1/info", token=None)
    assert status == 401 and "missing token" in body["error"] and response.getheader("WWW-Authenticate") == "Bearer"
    status, body = post(agent, "/v1/measure/layers", {"layers": [layer()]}, token="wrong")
    assert (status, body["error"]) == (401, "bad token")
    with pytest.raises(RemoteError, match=rf"agent at {agent.url} refused GET /v1/info: 401 bad token"):
        RemoteMeasurer(agent.url, "wrong").metadata()


def test_oversized_body_is_refused_from_content_length_alone(agent: Any) -> None:
    head = (f"POST /v1/measure/layers HTTP/1.1\nHost: x\nAuthorization: Bearer {TOKEN}\n"
            f"Content-Type: application/json\nContent-Length: {10**9}\n\n")
    status, body, seconds = raw(agent, head)
    assert status == 413 and "exceeds max_body_bytes=262144" in body["error"]
    assert seconds < 5  # answered at once: the agent never waited for the (unsent) gigabyte


def test_missing_content_length_gets_411(agent: Any) -> None:
    head = (f"POST /v1/measure/layers HTTP/1.1\nHost: x\nAuthorization: Bearer {TOKEN}\n"
            "Content-Type: application/json\n\n")
    status, body, _ = raw(agent, head)
    assert status == 411 and "Content-Length required" in body["error"]


def test_invalid_spec_names_the_field_path(agent: Any) -> None:
    status, body = post(agent, "/v1/measure/layers", {"layers": [layer(), layer(kernel=4)]})
    assert status == 400 and body["error"] == "layers[1].part.kernel=4 not in {3, 5, 7}"
    arch = TinySpace().decode([0, 0, 0]).to_dict()
    arch["blocks"][0]["stride"] = 3
    status, body = post(agent, "/v1/measure/archs", {"archs": [arch]})
    assert status == 400 and body["error"] == "archs[0].blocks[0].stride=3 not in {1, 2}"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not valid UTF-8 JSON"),
        (b'{"layers": [NaN]}', "NaN is not valid JSON"),
        (json.dumps({"layers": []}).encode(), "layers must be a non-empty JSON list"),
        (json.dumps({"layers": [{}], "extra": 1}).encode(), "unknown field(s) ['extra']"),
        (json.dumps({"layers": [1]}).encode(), "layers[0] must be a JSON object, got int"),
        (json.dumps({"layers": [{"kind": "block"}], "settings": {"blocks": 0}}).encode(),
         "settings.blocks=0 must be an integer >= 1"),
    ],
)
def test_malformed_bodies_get_400(agent: Any, body: bytes, reason: str) -> None:
    status, answer, _ = request(agent, "POST", "/v1/measure/layers", body)
    assert status == 400 and reason in answer["error"]


def test_pickles_are_never_unpickled(agent: Any) -> None:
    payload = pickle.dumps(Evil())
    status, body, _ = request(agent, "POST", "/v1/measure/layers", payload, content_type="application/octet-stream")
    assert status == 415 and "Content-Type must be application/json" in body["error"]
    status, body, _ = request(agent, "POST", "/v1/measure/layers", payload)  # lying about its type
    assert status == 400 and "not valid UTF-8 JSON" in body["error"]
    assert UNPICKLED == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"layers": [{**layer(), "in_channels": 4096, "out_channels": 4096,
                      "part": {**layer()["part"], "out_channels": 4096, "expand_ratio": 6.0}}]},
         "params exceed max_params=50,000,000"),
        ({"layers": [{**layer(), "in_size": 4096}]}, "layers[0].in_size=4096 exceeds max_resolution=1024"),
        ({"layers": [layer()] * 65}, "layers: 65 items exceed the agent's limit of 64"),
        ({"layers": [layer()], "settings": {"blocks": 10**6}}, "settings.blocks=1000000 exceeds the agent's limit"),
        ({"layers": [layer()] * 64, "settings": {"blocks": 100, "block_runs": 100, "retries": 5}},
         "exceed max_runs_per_request"),
    ],
)
def test_ops_and_work_over_the_caps_get_422(agent: Any, data: Any, reason: str) -> None:
    status, body = post(agent, "/v1/measure/layers", data)
    assert status == 422 and reason in body["error"]


def test_wrong_method_and_path(agent: Any) -> None:
    status, body, response = request(agent, "GET", "/v1/measure/layers")
    assert status == 405 and "GET not allowed on /v1/measure/layers; use POST" in body["error"]
    assert response.getheader("Allow") == "POST"
    status, body, _ = request(agent, "DELETE", "/v1/info")
    assert status == 405 and "use GET" in body["error"]
    status, body, _ = request(agent, "GET", "/v2/info")
    assert status == 404 and "unknown path '/v2/info'" in body["error"]


def test_client_errors_name_the_url() -> None:
    with pytest.raises(RemoteError, match=r"agent at http://127.0.0.1:1 unreachable"):
        RemoteMeasurer("http://127.0.0.1:1", TOKEN, info_timeout_s=5).metadata()
    with pytest.raises(ValueError, match="expected http://HOST:PORT"):
        RemoteMeasurer("file:///etc/passwd", TOKEN)


# ---- binding and the CLI ----------------------------------------------------------------------------


def test_default_bind_is_loopback_and_a_token_is_generated() -> None:
    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    with serve(port=0, measurer=LocalMeasurer("torch")) as server:
        assert server.host == "127.0.0.1" and server.url.startswith("http://127.0.0.1:")
        assert server.token_generated and len(server.token) >= 32


def test_non_loopback_bind_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger=agent.__name__):
        serve("0.0.0.0", 0, TOKEN, LocalMeasurer("torch"), background=False).shutdown()
    assert "the token is the only protection and traffic is plain HTTP" in caplog.text
    assert TOKEN not in caplog.text


def test_cli_serve_defaults_to_loopback_and_prints_a_generated_token(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    real_serve = device.serve

    def fake_serve(host: str, port: int, token: str | None, measurer: Any, **kw: Any) -> Any:
        seen.update(host=host, port=port, **kw)
        server = real_serve(host, 0, token, measurer, **kw)
        server.serve_forever = server.shutdown  # type: ignore[method-assign]  # return at once
        seen["token"] = server.token
        return server

    monkeypatch.setattr(device, "serve", fake_serve)
    app = typer.Typer()
    app.callback()(lambda: None)
    device.register(app)
    result = CliRunner().invoke(app, ["device", "serve", "--backend", "torch", "--max-body", "4096"])
    assert result.exit_code == 0, result.output
    assert seen["host"] == "127.0.0.1" and seen["max_body"] == 4096 and seen["background"] is False
    assert f"token (generated, shown once): {seen['token']}" in result.output
    assert "listening on http://127.0.0.1:" in result.output
    result = CliRunner().invoke(app, ["device", "serve", "--backend", "tpu"])
    assert result.exit_code != 0 and "'tpu' not in" in result.output
