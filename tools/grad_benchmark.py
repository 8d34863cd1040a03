"""Time the Simulator's forward pass against forward + backward.

    python -m tools.grad_benchmark [--detpixels 256] [--repeat 3] [--threads N] [--dtype float64]

Workload (a) of the benchmark (cubic cell, default_F, oversample 2, 4 phi
steps) on a ``detpixels`` square detector, every parameter requiring grad.
Prints the median forward time, the median backward time (backward alone:
forward + backward minus forward) and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def workload(detpixels: int):
    return ["-cell", "100", "100", "100", "90", "90", "90", "-lambda", "6.2", "-N", "5", "-default_F", "100",
            "-distance", "100", "-detpixels", str(detpixels), "-pixel", str(0.1 * 1024 / detpixels),
            "-oversample", "2", "-phi", "1", "-osc", "2", "-phisteps", "4"]


def measure(detpixels=256, repeat=3, dtype="float64"):
    """(forward seconds, backward seconds) medians."""
    import torch
    from torchsim import Simulator
    sim = Simulator.from_args(workload(detpixels), dtype=getattr(torch, dtype))
    sim()                                               # warm-up
    forward, backward = [], []
    for _ in range(repeat):
        sim.zero_grad()
        t0 = time.perf_counter()
        with torch.no_grad():
            sim()
        t1 = time.perf_counter()
        image = sim()
        t2 = time.perf_counter()
        image.sum().backward()
        t3 = time.perf_counter()
        forward.append(t1 - t0)
        backward.append(t3 - t2)            # backward alone (the forward before it builds the graph)
    return statistics.median(forward), statistics.median(backward)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detpixels", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    args = parser.parse_args(argv)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    fwd, bwd = measure(args.detpixels, args.repeat, args.dtype)
    print(f"workload (a) at {args.detpixels}x{args.detpixels}, {args.dtype}, {torch.get_num_threads()} threads")
    print(f"forward  {fwd:.3f} s")
    print(f"backward {bwd:.3f} s  ({bwd / fwd:.2f}x forward)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
