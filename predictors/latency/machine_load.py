"""How busy the rest of the machine was while we measured.

A latency timed while another job shares the cores is inflated (on this project's 2-core VM a
second CPU-bound job turned 0.27 ms into 0.37 ms), and nothing in the numbers themselves says so.
The load average cannot tell: it counts our own training that just finished. Instead
`OtherLoad` samples the machine's busy CPU time (/proc/stat) and this process's own CPU time
around the measurement; the difference is what other processes used, in cores. Where /proc/stat
does not exist (macOS, Windows) the probe reports None: unknown, not quiet.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

__all__ = ["BUSY_CORES", "OtherLoad"]

BUSY_CORES = 0.5  # other processes using half a core or more: the measurement is not from a quiet machine


def _machine_busy_s() -> float | None:
    try:
        with open("/proc/stat", encoding="ascii") as file:
            fields = file.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class OtherLoad:
    """``with OtherLoad() as load: measure()``; then ``load.cores`` (None when unknown)."""

    cores: float | None = None

    def __enter__(self) -> OtherLoad:
        self._start = (time.perf_counter(), time.process_time(), _machine_busy_s())
        return self

    def __exit__(self, *_: object) -> None:
        wall0, own0, busy0 = self._start
        busy1 = _machine_busy_s()
        wall = time.perf_counter() - wall0
        if busy0 is None or busy1 is None or wall <= 0:
            return
        # clock ticks are coarse (10 ms): never report a negative load
        self.cores = max(0.0, (busy1 - busy0 - (time.process_time() - own0)) / wall)

    @property
    def busy(self) -> bool:
        return self.cores is not None and self.cores >= BUSY_CORES
