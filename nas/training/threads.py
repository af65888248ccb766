"""How many torch threads a training process should use: its share of the CPUs it may run on.

torch starts one OpenMP thread per core whatever else runs. On this project's 2-core VM, a
search training with 2 threads beside another 2-thread job made epochs 11x slower (125 s -> 1,400 s,
the threads spinning on each other), and a new user's digits trial went from 2 s to 18 s a step.
A thread per *free* core avoids that: the CPUs this process may use (its affinity, which Ray and
`taskset` set), minus what other processes are using right now (sampled from /proc/stat over a
quarter second), at least 1. With the machine to itself that is every core, as torch's default.
"""

from __future__ import annotations

import logging
import os
import time

from predictors.latency.machine_load import OtherLoad

logger = logging.getLogger(__name__)

__all__ = ["available_cpus", "fair_threads"]


def available_cpus() -> int:
    """CPUs this process may run on (affinity where the OS has it, else the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def fair_threads(sample_s: float = 0.25) -> int:
    """A thread per CPU that other processes leave free (rounded), at least 1."""
    cpus = available_cpus()
    with OtherLoad() as load:
        time.sleep(sample_s)
    if load.cores is None:
        return cpus
    threads = max(1, min(cpus, round(cpus - load.cores)))
    if threads < cpus:
        logger.info("other processes use %.1f of %d CPUs: training with %d thread(s) (--train-threads to override)",
                    load.cores, cpus, threads)
    return threads
