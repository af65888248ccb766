"""The Ray Tune path: embedded local Ray gives the same run directory (files, JSON keys, results)
as the in-process loop; a search through `ray_address` on a separately started cluster works.
About 30 s each (Ray start-up, a worker process per trial)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from search_helpers import read_jsonl, tiny_config
from test_search_runner import _test_registrations, check_best, lut  # noqa: F401  (shared fixtures)

from nas.search.config import SearchConfig
from nas.search.runner import run_search

pytestmark = pytest.mark.ray
RAY = Path(sys.executable).with_name("ray")


def layout(run: Path) -> dict[str, object]:
    """File names and JSON keys of a run (Ray's own ray_results/ aside)."""
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if "ray_results" not in p.parts)
    records = read_jsonl(run / "trials.jsonl")
    return {
        "files": files,
        "config": sorted(json.loads((run / "config.json").read_text())),
        "searcher": sorted(json.loads((run / "searcher.json").read_text())),
        "metrics": sorted(json.loads((run / "best/metrics.json").read_text())),
        "record": sorted({key for record in records for key in record}),
        "result": sorted({key for record in records for key in record["result"]}),
    }


def test_embedded_ray_writes_the_same_run_directory_as_the_local_loop(lut: Path, tmp_path: Path) -> None:
    local = tiny_config(lut, trials=6)
    run_search(local, tmp_path / "local", progress=False)
    on_ray = SearchConfig.from_dict({**local.to_dict(), "ray": True, "workers": 2, "cpus_per_trial": 1.0})
    started = time.perf_counter()
    summary = run_search(on_ray, tmp_path / "ray", progress=False)
    print(f"embedded Ray search: {time.perf_counter() - started:.1f} s")
    assert summary.trials == 6
    assert layout(tmp_path / "ray") == layout(tmp_path / "local")
    assert (tmp_path / "ray/ray_results").is_dir()  # Tune's files stay inside the run
    ray_records = {r["trial_id"]: r for r in read_jsonl(tmp_path / "ray/trials.jsonl")}
    local_records = {r["trial_id"]: r for r in read_jsonl(tmp_path / "local/trials.jsonl")}
    assert sorted(ray_records) == list(range(6))
    for trial_id, record in local_records.items():  # same architecture, same seed: same numbers
        other = ray_records[trial_id]
        assert other["arch_hash"] == record["arch_hash"]
        assert other["result"]["status"] == record["result"]["status"]
        assert other["result"]["accuracy"] == pytest.approx(record["result"]["accuracy"])
        assert other["executor"] == ("ray-driver" if record["result"]["status"] == "infeasible" else "ray")
    metrics = check_best(tmp_path / "ray", on_ray)
    assert metrics["weights_from"] == "trial"  # copied from the worker's trial directory


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _processes_under(marker: str) -> list[int]:
    """Processes whose command line names `marker` (our cluster's temp dir), and their descendants:
    the cluster this test started, and nothing else on the machine (no `ray stop`)."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        table[int(entry.name)] = (parent, cmdline)
    chosen = {pid for pid, (_, cmdline) in table.items() if marker in cmdline and pid != os.getpid()}
    while True:
        children = {pid for pid, (parent, _) in table.items() if parent in chosen} - chosen
        if not children:
            return sorted(chosen)
        chosen |= children


def _stop_cluster(marker: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _processes_under(marker)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 2
        while pids and time.monotonic() < deadline and _processes_under(marker):
            time.sleep(0.2)


@pytest.fixture
def ray_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # a short path: Ray's unix socket paths under it must stay below ~107 bytes
    temp_dir = tempfile.mkdtemp(prefix="hwnas-rt-")
    home = Path(temp_dir) / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("RAY_TMPDIR", temp_dir)
    port = _free_port()
    command = [str(RAY), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
               "--include-dashboard=false", f"--temp-dir={temp_dir}", "--object-store-memory=100000000",
               "--disable-usage-stats"]
    try:
        # the cluster makes its own token (in the temp HOME); nothing inherited from other Ray users
        env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH")}
        started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        _stop_cluster(temp_dir)
        pytest.skip("`ray start --head` did not finish in 90 s in this sandbox")
    if started.returncode != 0:
        _stop_cluster(temp_dir)
        pytest.skip(f"`ray start --head` failed in this sandbox: {(started.stderr or started.stdout)[-500:]}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_search_through_a_ray_address(lut: Path, tmp_path: Path, ray_cluster: str) -> None:
    config = tiny_config(lut, trials=4, ray_address=ray_cluster, workers=2, asha=True,
                         strategy="evolution")
    config = SearchConfig.from_dict({**config.to_dict(), "train": {**config.to_dict()["train"], "epochs": 2}})
    started = time.perf_counter()
    summary = run_search(config, tmp_path / "run", progress=False)
    print(f"search through {ray_cluster}: {time.perf_counter() - started:.1f} s")
    records = read_jsonl(tmp_path / "run/trials.jsonl")
    assert summary.trials == 4 and len({r["trial_id"] for r in records}) == 4
    assert {r["executor"] for r in records} <= {"ray", "ray-driver"}
    assert all(r["result"]["status"] in ("ok", "infeasible") for r in records)
    trained = [r for r in records if r["result"]["status"] == "ok"]
    # ASHA may stop a trial after its first epoch; the others ran both
    assert trained and all(r["result"]["epochs"] in (1, 2) for r in trained)
    check_best(tmp_path / "run", config)
