"""Peak memory of one ProxylessNAS training step per mode, for `bench.proxyless`: each mode runs in a
fresh process, `python -m bench.proxyless_memory MODE ...`, so no mode inherits another's heap."""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("bench.proxyless")

MODES = ("plain", "binarized-weight", "binarized-arch", "all-paths")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--lut", type=Path, required=True, help="The proxyless space's latency table.")
    for flag, kind, default in (("--resolution", int, 32), ("--width-mult", float, 0.5), ("--threads", int, 1),
                                ("--seed", int, 0), ("--memory-batch", int, 32)):
        parser.add_argument(flag, type=kind, default=default)
    return parser.parse_args(argv)


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


def _peak_so_far(device: torch.device, reset: bool) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return _vm_hwm_bytes() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _model_of(mode: str, supernet: Any, layout: Any) -> torch.nn.Module:
    """What a step of `mode` trains: a plain network of the sampled path, or the supernet set up
    for that mode (the architecture step's gates are made leaves by the caller, on the device)."""
    from search_spaces.build import build_model

    if mode == "plain":
        return build_model(layout.derive(list(supernet.active)))
    if mode == "binarized-weight":
        supernet.fix(list(supernet.active))
    elif mode == "all-paths":
        supernet.mode = "all"
    return supernet


def _loss(mode: str, model: torch.nn.Module, supernet: Any, latency: Any, images: torch.Tensor,
          labels: torch.Tensor) -> torch.Tensor:
    from nas.oneshot.supernet import restricted_probabilities

    loss = torch.nn.functional.cross_entropy(model(images), labels)
    if mode in ("binarized-arch", "all-paths"):
        alphas = list(supernet.alphas)
        probabilities = (supernet.probabilities() if mode == "all-paths" else
                         [restricted_probabilities(a, supernet.sampled_paths(s)) for s, a in enumerate(alphas)])
        loss = loss + 0.1 * (latency.expected_ms(probabilities) / 10.0 - 1.0).abs()
    return loss


def memory_worker(args: argparse.Namespace) -> dict[str, Any]:
    """One training step of `args.mode`: its peak memory and the bytes autograd saved for backward."""
    from nas.oneshot.layout import layout_for_space
    from nas.oneshot.supernet import LatencyModel, Supernet
    from predictors.latency import LatencyTable
    from search_spaces.spaces import get_space

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    layout = layout_for_space(get_space("proxyless", resolution=args.resolution, num_classes=10,
                                        width_mult=args.width_mult))
    torch.manual_seed(args.seed)
    supernet = Supernet(layout)
    supernet.sample("two", torch.Generator().manual_seed(args.seed))  # the same draw in every process
    model = _model_of(args.mode, supernet, layout).to(device).train()
    if args.mode == "binarized-arch":
        supernet.gates = [gate.detach().to(device).requires_grad_(True) for gate in supernet.gates]
    latency = LatencyModel(layout, LatencyTable.load(args.lut))
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
    reset = _reset_hwm()
    before = torch.cuda.memory_allocated() if device.type == "cuda" else _peak_so_far(device, reset)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = _loss(args.mode, model, supernet, latency, images, labels)
    if args.mode == "binarized-arch":
        loss.backward(inputs=list(supernet.alphas) + supernet.gates)  # as ProxylessSearch.arch_gradients
    else:
        loss.backward()  # weights (and, all paths, the logits too)
    return {"mode": args.mode, "device": device.type, "peak_bytes": _peak_so_far(device, reset) - before,
            "saved_bytes": sum(saved.values()), "hwm_reset": reset,
            "active_params": sum(p.numel() for p in model.parameters() if p.grad is not None)}


def memory_figures(args: argparse.Namespace, lut: Path) -> list[dict[str, Any]]:
    """Every mode's figures, each from a fresh process with `args.threads` OpenMP threads."""
    rows = []
    for mode in MODES:
        command = [sys.executable, "-m", "bench.proxyless_memory", mode, "--resolution", str(args.resolution),
                   "--width-mult", str(args.width_mult), "--threads", str(args.threads), "--seed", str(args.seed),
                   "--memory-batch", str(args.memory_batch), "--lut", str(lut.resolve())]
        environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        done = subprocess.run(command, check=False, capture_output=True, text=True, env=environment,
                              cwd=Path(__file__).resolve().parents[1])
        if done.returncode != 0:
            raise RuntimeError(f"memory worker {mode} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        logger.info("memory %s: %s", mode, rows[-1])
    return rows


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(memory_worker(parse_args(argv))))  # the last line of stdout is what memory_figures reads


if __name__ == "__main__":
    main()
