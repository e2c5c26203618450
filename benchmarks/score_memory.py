"""Blocked TRAK scoring in bounded memory: random features, large n_train x n_target. Not a test.

Writes random float32 features to memory-mapped ``.npy`` files in a temporary folder (block by block), then runs
the library's own ``gram`` -> ``regularized_inverse`` -> ``trak_scores`` into a memory-mapped score file, and
reports wall time per step and the peak of anonymous (heap) memory, sampled from /proc/self/status. File-backed
pages of the memory maps are page cache the kernel can drop, so they are reported separately (VmHWM).

    python benchmarks/score_memory.py                          # 200,000 train x 10,000 targets x 2048 dims
    python benchmarks/score_memory.py --train 20000 --targets 1000
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from trakscope.attribution.score import gram, regularized_inverse, trak_scores


class PeakAnon:
    """Samples RssAnon (kB) of this process every 50 ms; ``peak_mb`` is the largest seen."""

    def __init__(self) -> None:
        self.peak_kb, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _field(name: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, self._field("RssAnon"))
            time.sleep(0.05)

    def __enter__(self) -> PeakAnon:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024


def random_memmap(path: Path, rows: int, dim: int, seed: int, block: int = 8192) -> np.ndarray:
    """float32 ``[rows, dim]`` standard-normal features written block by block (never whole in memory)."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    rng = np.random.default_rng(seed)
    for s in range(0, rows, block):
        arr[s : s + block] = rng.standard_normal((min(block, rows - s), dim), dtype=np.float32)
    arr.flush()
    return np.load(path, mmap_mode="r")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=200_000)
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--dir", default=None, help="where the temporary arrays go (default: the system temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp, PeakAnon() as mem:
        folder = Path(tmp)
        t = time.perf_counter()
        x = random_memmap(folder / "train.npy", args.train, args.dim, seed=0)
        phi = random_memmap(folder / "test.npy", args.targets, args.dim, seed=1)
        q = np.random.default_rng(2).uniform(size=args.train).astype(np.float32)
        times = {"write features": time.perf_counter() - t}
        t = time.perf_counter()
        inv, lam = regularized_inverse(gram(x), ridge=3.0)
        times["X^T X and inverse"] = time.perf_counter() - t
        t = time.perf_counter()
        scores, _ = trak_scores([x], [inv], [phi], q, out_path=folder / "scores.npy")
        times["scores"] = time.perf_counter() - t
        size_gb = scores.nbytes / 2**30
        del scores
    hwm = PeakAnon._field("VmHWM") / 1024
    print(f"{args.train:,} train x {args.targets:,} targets x {args.dim} dims, one checkpoint; "
          f"score file {size_gb:.1f} GiB, features {(args.train + args.targets) * args.dim * 4 / 2**30:.1f} GiB")
    for name, sec in times.items():
        print(f"  {name}: {sec:.1f} s")
    print(f"  peak anonymous memory: {mem.peak_mb:,.0f} MB; "
          f"peak RSS incl. page cache of the maps (VmHWM): {hwm:,.0f} MB")


if __name__ == "__main__":
    main()
