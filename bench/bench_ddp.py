"""Data-parallel step time: one process against two under torchrun (gloo on CPU, NCCL on a GPU machine).

    python bench/bench_ddp.py                       # CPU: 1 process x 1 thread, 1 x 2 threads, 2 x 1 thread
    python bench/bench_ddp.py --device cuda --nproc 1,2,4

Every configuration trains MLB with the same global batch on the same synthetic feature shards
(`mlbpipe synth features`, Conformer `small`, or the raw path with `--features raw` on the demo's tiny
ResNet), through `mlbpipe train` (under torchrun for more than one process), and times each call of
`mlb.train.step.train_step` on rank 0 after `--warmup` steps (the step includes the gradient all-reduce and
the balancer's reductions). Prints the median step time, samples/s, the speed-up against the first
configuration and the scaling efficiency (speed-up / processes); writes bench/results/ddp_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    """One training process: `mlbpipe train`, timing every train_step; rank 0 writes the times."""
    import torch

    import mlb.train.trainer
    from pipeline.cli import main as cli_main

    step = mlb.train.trainer.train_step
    times: list[float] = []

    def timed(*a, **kw):
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        logs = step(*a, **kw)
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        return logs

    mlb.train.trainer.train_step = timed
    sys.argv = ["mlbpipe", "train", *args.train_args]
    try:
        cli_main()
    except SystemExit as stop:
        if stop.code:
            raise
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.times).write_text(json.dumps(times))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(data: Path, run: Path, nproc: int, threads: int, args: argparse.Namespace) -> dict:
    times_file = run / "times.json"
    train_args = [
        "--features", args.features, "--data", str(data), "--out", str(run), "--method", "mlb",
        "--size", args.size, "--batch-size", str(args.batch_size), "--epochs", "100",
        "--max-steps", str(args.warmup + args.steps), "--device", args.device, "--no-dvclive", "--seed", "0",
    ]  # fmt: skip
    me = [str(Path(__file__).resolve()), "--worker", "--times", str(times_file), "--device", args.device]
    if nproc == 1:
        command = [sys.executable, *me, "--", *train_args]
    else:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *me, "--", *train_args,
        ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    steps = json.loads(times_file.read_text())[args.warmup :]
    median = statistics.median(steps)
    return {
        "processes": nproc,
        "threads_per_process": threads,
        "steps_timed": len(steps),
        "median_step_s": median,
        "samples_per_s": args.batch_size / median,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--times", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--features", default="cached", choices=("cached", "raw"))
    parser.add_argument("--size", default="small", help="model size (tiny, small, paper)")
    parser.add_argument("--batch-size", type=int, default=32, help="the global batch (split among processes)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps")
    parser.add_argument("--nproc", default=None, help="process counts, e.g. 1,2 (GPU: one per device)")
    parser.add_argument("--data", type=Path, help="a prepare output folder to use instead of a synthetic one")
    parser.add_argument("train_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        tmp = Path(tmp)
        data = args.data
        if data is None:
            if args.features != "cached":
                parser.error("--features raw needs --data (a prepared corpus, e.g. the demo's)")
            from pipeline.synth_features import FeatureSynthConfig, synthesize_features

            data = tmp / "out"
            synthesize_features(
                data, FeatureSynthConfig(train=1024, validation=64, test=64, maxcount=64, progress=False)
            )
        if args.device == "cuda":
            counts = [int(n) for n in (args.nproc or "1,2").split(",")]
            plan = [(n, 1) for n in counts]
        else:  # the CPU's cores: one process with all of them, against one process per core
            cores = os.cpu_count() or 2
            plan = [(1, 1), (1, cores), (cores, 1)] if args.nproc is None else [
                (int(n), 1) for n in args.nproc.split(",")
            ]  # fmt: skip
        rows = []
        for nproc, threads in plan:
            row = measure(data, tmp / f"run-{nproc}x{threads}", nproc, threads, args)
            rows.append(row)
        base = rows[0]["median_step_s"]
        print(
            f"MLB, {args.features} path, size {args.size}, global batch {args.batch_size}, {args.device}; "
            f"median of {args.steps} steps"
        )
        print("| processes x threads | step (ms) | samples/s | speed-up | efficiency |")
        print("|---|---|---|---|---|")
        for row in rows:
            row["speedup"] = base / row["median_step_s"]
            cores = row["processes"] * row["threads_per_process"] / rows[0]["threads_per_process"]
            row["efficiency"] = row["speedup"] / cores  # 100%: every added core (or device) pays in full
            print(
                f"| {row['processes']} x {row['threads_per_process']} | {1000 * row['median_step_s']:.1f} | "
                f"{row['samples_per_s']:.1f} | {row['speedup']:.2f}x | {row['efficiency']:.0%} |"
            )
        out = ROOT / "bench" / "results" / f"ddp_{args.device}.json"
        out.write_text(json.dumps({"config": {k: v for k, v in vars(args).items() if k != "train_args"}, "rows": rows},
                                  indent=2, default=str))  # fmt: skip
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
