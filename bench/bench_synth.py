"""Generation speed of the synthetic CREMA-D corpus (`mlbpipe synth cremad`).

    .venv/bin/python bench/bench_synth.py [--clips 200] [--workers 1 2] [--size 480x360]

Prints clips/s and seconds per worker count. Target: 200 clips in under 2 minutes on 2 cores.
Each run writes to a fresh temporary folder, removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", default="480x360")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    from pipeline.standins.cremad import SynthConfig, synth_cremad

    print(f"{args.clips} clips at {width}x{height}, {os.cpu_count()} CPUs visible")
    for workers in args.workers:
        out = Path(tempfile.mkdtemp(prefix="bench_synth_"))
        try:
            start = time.perf_counter()
            summary = synth_cremad(
                out,
                SynthConfig(
                    clips=args.clips,
                    width=width,
                    height=height,
                    seed=args.seed,
                    workers=workers,
                    progress=False,
                ),
            )
            seconds = time.perf_counter() - start
            size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
        finally:
            shutil.rmtree(out, ignore_errors=True)
        print(
            f"workers={workers}: {seconds:6.1f} s  {args.clips / seconds:5.2f} clips/s  "
            f"{summary.audio_seconds / seconds:5.1f}x real time  {size_mb:.0f} MB"
            f"  [{'OK' if seconds < 120 or args.clips != 200 else 'SLOW'}: target 200 clips < 120 s]"
        )


if __name__ == "__main__":
    main()
