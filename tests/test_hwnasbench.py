"""HW-NAS-Bench's FBNet-space latencies as latency tables: the four additive devices' tables
reproduce every one of the 5,000 published per-architecture latencies; bad files are refused with
the key named. The data tests skip when the shared data is absent (`HWNAS_SHARED_DATA`, default
`../shared/data` beside the repository)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nas.cli import app
from predictors.latency import LatencyTable, LatencyTableError, import_table
from predictors.latency.hwnasbench import ADDITIVE_DEVICES, read_hwnasbench

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HWNAS_SHARED_DATA", ROOT.parent / "shared" / "data"))
DATA = SHARED / "luts" / "hwnasbench_fbnet" / "help_fbnet_latency.json"
needs_data = pytest.mark.skipif(not DATA.is_file(), reason=f"needs the shared HW-NAS-Bench data ({DATA})")


@functools.cache
def data():
    return read_hwnasbench(DATA)


@needs_data
@pytest.mark.parametrize("device", ADDITIVE_DEVICES)
def test_tables_reproduce_all_5000_latencies(device: str, tmp_path: Path) -> None:
    table = import_table("hwnasbench", DATA, device=device)
    table.save(tmp_path / "t.json")
    table = LatencyTable.load(tmp_path / "t.json")  # through the file format
    assert (table.space, table.resolution, table.num_classes, len(table)) == ("fbnet", 32, 100, 104)
    assert table.metadata["exact"] is True and table.metadata["source_archs"] == 5000
    published = data().device(device)
    predicted = np.array([table.predict(arch) for arch in data().archs])
    assert len(predicted) == 5000
    np.testing.assert_allclose(predicted, published, rtol=1e-9, atol=1e-9)
    assert min(m.median_ms for m in table.entries.values()) >= 0


@needs_data
def test_cli_import_and_phone_fit(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["lut", "import", str(DATA), "--format", "hwnasbench", "--device", "pixel3",
                                 "--out", str(tmp_path / "pixel3.json")])
    assert result.exit_code == 0, result.output
    assert "reproducing 5000 architectures' latencies exactly" in result.output
    missing = runner.invoke(app, ["lut", "import", str(DATA), "--format", "hwnasbench", "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "--device is required for the hwnasbench format" in missing.output
    phone = import_table("hwnasbench", DATA, device="pixel2")
    assert phone.metadata["exact"] is False and 3 < phone.metadata["mean_abs_percent_error"] < 15


def small_file(tmp_path: Path, **changes) -> Path:
    content = {"ops": ["k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip"],
               "archs": [[0] * 22, [8] * 22], "pixel3": [10.0, 5.0]}
    content.update(changes)
    path = tmp_path / "h.json"
    path.write_text(json.dumps(content))
    return path


@pytest.mark.parametrize(("changes", "message"), [
    ({"archs": [[0] * 21, [8] * 22]}, r"archs\[0\] must be 22 op indices in 0..8"),
    ({"archs": [[0] * 22, [9] * 22]}, r"archs\[1\] must be 22 op indices"),
    ({"pixel3": [10.0, -1]}, r"pixel3\[1\]=-1 must be a positive number of ms"),
    ({"pixel3": [10.0, "fast"]}, r"pixel3\[1\]='fast' must be a positive"),
    ({"pixel3": [10.0]}, r"'pixel3' must list 2 latencies"),
    ({"ops": ["a"]}, r"ops=\['a'\], expected"),
])
def test_bad_files_name_the_entry(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(LatencyTableError, match=message):
        read_hwnasbench(small_file(tmp_path, **changes))


def test_unknown_device_lists_the_devices(tmp_path: Path) -> None:
    with pytest.raises(LatencyTableError, match=r"device 'pixel9' not in the hwnasbench data; devices: pixel3"):
        import_table("hwnasbench", small_file(tmp_path), device="pixel9")
