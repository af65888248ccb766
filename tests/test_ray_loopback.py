"""The embedded Ray of `nas search --ray` listens on 127.0.0.1 only (issue #19: before, its GCS,
raylet, workers and driver listened on every interface, so anyone who reached them could run
code). Starts Ray once, about 10 s."""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

LISTEN = "0A"  # TCP state in /proc/net/tcp


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # /proc/net/tcp{,6} print the address as 32-bit words in host (little-endian) byte order
    raw = bytes.fromhex(hex_address)
    return ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))


def _listening_inodes() -> dict[str, str]:
    """inode -> 'address:port' of every listening TCP socket on the machine."""
    sockets = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == LISTEN:
                address, port = fields[1].split(":")
                sockets[fields[9]] = f"{_address(address)}:{int(port, 16)}"
    return sockets


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue  # the process ended meanwhile
    found, grew = {root}, True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def _listening_under(root: int) -> dict[str, str]:
    """'address:port' -> process name, for the sockets `root` and its descendants listen on."""
    inodes, found = _listening_inodes(), {}
    for pid in _descendants(root):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        for link in links:
            inode = link[len("socket:["):-1] if link.startswith("socket:[") else None
            if inode in inodes:
                found[inodes[inode]] = name
    return found


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.rpartition(":")[0])
    mapped = getattr(ip, "ipv4_mapped", None)  # an IPv6 socket bound to ::ffff:127.0.0.1
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _pid() -> int:
    return os.getpid()


def test_address_decoding() -> None:
    assert _address("0100007F") == ipaddress.ip_address("127.0.0.1")
    assert _is_loopback(f"{_address('0000000000000000FFFF00000100007F')}:80")
    assert not _is_loopback("0.0.0.0:80") and not _is_loopback(":::80")


@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="reads Linux's /proc/net/tcp")
def test_embedded_ray_listens_on_loopback_only(tmp_path: Path) -> None:
    from nas.search.ray_runner import connected

    config = SimpleNamespace(ray_address=None, workers=1, cpus_per_trial=1.0)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    with connected(config, tmp_path):
        assert ray.get(ray.remote(_pid).remote()) != os.getpid()  # a worker is up, and listening
        sockets = _listening_under(os.getpid())
    names = set(sockets.values())
    assert {"gcs_server", "raylet"} <= names, sockets  # the test saw the cluster it started
    assert [f"{address} ({name})" for address, name in sockets.items() if not _is_loopback(address)] == []
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") is None  # the process is left as it was
