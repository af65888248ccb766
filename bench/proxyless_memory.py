"""Peak memory of one ProxylessNAS training step per mode, for `proxyless.py`: each mode runs in a
fresh process (the script re-run with ``--memory-worker MODE``) so no mode inherits another's heap."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger("bench.proxyless")

MODES = ("plain", "binarized-weight", "binarized-arch", "all-paths")


def _vm_hwm_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: peak RSS := current RSS
        return True
    except OSError:
        return False


def memory_worker(args: argparse.Namespace, space: Any, lut: Path) -> None:
    """Run one training step of `args.memory_worker` and print its figures as one JSON line."""
    import resource

    import torch

    from nas.oneshot.supernet import LatencyModel, Supernet, restricted_probabilities
    from nas.oneshot.layout import layout_for_space
    from predictors.latency import LatencyTable
    from search_spaces.build import build_model

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    layout = layout_for_space(space)
    torch.manual_seed(args.seed)
    supernet = Supernet(layout)
    supernet.sample("two", torch.Generator().manual_seed(args.seed))  # the same draw in every process
    active = list(supernet.active)
    mode = args.memory_worker
    if mode == "plain":
        model = build_model(layout.derive(active))
    else:
        model = supernet
        if mode == "binarized-weight":
            supernet.fix(active)
        elif mode == "all-paths":
            supernet.mode = "all"
    model.to(device).train()
    if mode == "binarized-arch":
        supernet.gates = [gate.detach().to(device).requires_grad_(True) for gate in supernet.gates]
    latency = LatencyModel(layout, LatencyTable.load(lut))
    generator = torch.Generator().manual_seed(args.seed + 1)
    images = torch.randn(args.memory_batch, 3, args.resolution, args.resolution, generator=generator).to(device)
    labels = torch.randint(0, 10, (args.memory_batch,), generator=generator).to(device)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    reset = _reset_hwm()
    rss_before = _vm_hwm_bytes() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        if mode in ("binarized-arch", "all-paths"):
            alphas = list(supernet.alphas)
            probabilities = (supernet.probabilities() if mode == "all-paths" else
                             [restricted_probabilities(a, supernet.sampled_paths(s)) for s, a in enumerate(alphas)])
            loss = loss + 0.1 * (latency.expected_ms(probabilities) / 10.0 - 1.0).abs()
    if mode == "binarized-arch":
        loss.backward(inputs=list(supernet.alphas) + supernet.gates)  # as ProxylessSearch.arch_gradients
    else:
        loss.backward()  # weights (and, all paths, the logits too)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        after = _vm_hwm_bytes() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak = after - rss_before
    print(json.dumps({"mode": mode, "device": device.type, "peak_bytes": peak, "saved_bytes": sum(saved.values()),
                      "hwm_reset": reset, "active_params": sum(p.numel() for p in model.parameters()
                                                               if p.grad is not None)}))


def memory_figures(args: argparse.Namespace, script: Path, lut: Path) -> list[dict[str, Any]]:
    rows = []
    for mode in MODES:
        command = [sys.executable, str(script.resolve()), "--memory-worker", mode,
                   "--resolution", str(args.resolution), "--width-mult", str(args.width_mult),
                   "--threads", str(args.threads), "--seed", str(args.seed), "--memory-batch", str(args.memory_batch),
                   "--lut", str(lut)]
        environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        done = subprocess.run(command, check=False, capture_output=True, text=True, env=environment)
        if done.returncode != 0:
            raise RuntimeError(f"memory worker {mode} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        logger.info("memory %s: %s", mode, rows[-1])
    return rows
