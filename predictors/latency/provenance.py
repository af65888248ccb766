"""Where a table's numbers were measured, and whether a measurer is the same place.

A table built through a device agent holds the phone's latencies; timing its networks on the
workstation and storing the result as the table's calibration (or printing it as "latency
measured" next to the table's prediction) mixes two devices without a word. A table therefore
names its device in its metadata (`remote_url` for an agent, else the host name and CPU model),
and `measured_elsewhere` says, in one line, when a measurer is not that device.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["describe_device", "measured_elsewhere"]


def describe_device(metadata: Mapping[str, Any]) -> str:
    if metadata.get("remote_url"):
        return f"the agent at {metadata['remote_url']}"
    name = metadata.get("device") or "?"
    return f"{name} ({metadata['cpu_model']})" if metadata.get("cpu_model") else str(name)


def measured_elsewhere(table: Mapping[str, Any], measurer: Mapping[str, Any]) -> str | None:
    """None when `measurer` (its metadata) times on the device `table` (its metadata) was
    measured on, else the reason. A table that records no device (an imported one) never matches
    a measurer: its numbers come from a machine that is not here."""
    if table.get("remote_url") or measurer.get("remote_url"):
        same = table.get("remote_url") == measurer.get("remote_url")
    elif not table.get("device"):
        return f"the table records no measuring device (imported: {table.get('source', 'unknown source')})"
    else:
        same = (table.get("device"), table.get("cpu_model")) == (measurer.get("device"), measurer.get("cpu_model"))
    if same:
        return None
    return f"the table was measured on {describe_device(table)}, this measurer runs on {describe_device(measurer)}"
