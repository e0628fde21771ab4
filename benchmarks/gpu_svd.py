"""Where a checkpoint's singular values are fastest: the GPU (float64, float32) or the host's cores.

The GPU check (``benchmarks/gpu.sh``) found the float64 SVDs to be two thirds of a checkpoint's time at
Pythia-410m's shape on an H200. This times the same work, one checkpoint's stored matrices (weights and
gradients of every layer: query_key_value, dense, dense_h_to_4h, dense_4h_to_h; random values), four
ways, in one process, each after a warm-up, the quickest expected first; each figure is printed and
saved as soon as it is measured (a run cut by a time limit keeps what it measured):

- ``gpu64``: ``torch.linalg.svdvals`` on the device in float64, the matrices of one shape in one batched
  call (what ``etl.metrics.batched_svdvals`` does on a GPU);
- ``gpu32``: the same in float32;
- ``cpu64``: on the host in float64, one call per matrix, torch's threads on all cores;
- ``cpu64_threads``: on the host in float64, one matrix per core at a time (torch at 1 thread each).

Only torch is needed. Usage: ``python benchmarks/gpu_svd.py [--shape 410m] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SHAPES = {"160m": (12, 768), "410m": (24, 1024), "1.4b": (24, 2048)}  # layers, d_model


def matrices(layers: int, d: int) -> list[tuple[int, int]]:
    """The stored matrices' shapes of one checkpoint: 4 per layer, weights and gradients."""
    return [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)] * layers * 2


def timed(work) -> float:
    import torch

    torch.cuda.synchronize() if torch.cuda.is_available() else None
    start = time.perf_counter()
    work()
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    return time.perf_counter() - start


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="410m")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    layers, d = SHAPES[args.shape]
    shapes = matrices(layers, d)
    generator = torch.Generator().manual_seed(0)
    host = [torch.randn(*s, generator=generator, dtype=torch.float64) for s in shapes]
    by_shape: dict[tuple, list] = {}
    for m in host:
        by_shape.setdefault(tuple(m.shape), []).append(m)
    cores = os.cpu_count() or 1
    results: dict = {"shape": args.shape, "matrices": len(shapes), "cores": cores, "torch": torch.__version__}

    def gpu(dtype):
        stacks = [torch.stack(ms).to("cuda", dtype) for ms in by_shape.values()]

        def work():
            for stack in stacks:
                torch.linalg.svdvals(stack)

        warm = [s[:1] for s in stacks]
        for w in warm:
            torch.linalg.svdvals(w)
        return timed(work)

    def cpu_serial():
        torch.set_num_threads(cores)
        torch.linalg.svdvals(host[0])
        return timed(lambda: [torch.linalg.svdvals(m) for m in host])

    def cpu_threads():
        torch.set_num_threads(1)
        with ThreadPoolExecutor(cores) as pool:
            list(pool.map(torch.linalg.svdvals, host[:cores]))
            seconds = timed(lambda: list(pool.map(torch.linalg.svdvals, host)))
        torch.set_num_threads(cores)
        return seconds

    ways = {"cpu64_threads": cpu_threads, "cpu64": cpu_serial}
    if torch.cuda.is_available():
        results["device"] = torch.cuda.get_device_name(0)
        ways = {"gpu32": lambda: gpu(torch.float32), **ways, "gpu64": lambda: gpu(torch.float64)}
    for name, way in ways.items():  # each figure printed and saved as it comes: a cut run keeps them
        results[name] = way()
        print(json.dumps({name: results[name]}), flush=True)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"gpu-svd-{args.shape}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
