"""Fingerprints of training runs, to show that a restructuring leaves results bit-identical.

Trains, with the `mlbpipe train` of the checkout given by --repo (this one by default), on small generated
shard folders: MLB and MLA (several optimiser updates per batch) on both input paths, each once straight
through and once stopped after 4 steps and resumed; and MLB on 2 processes under torchrun. Then hashes what
each run wrote: metrics.json and epochs.jsonl (without their wall-clock seconds), steps.jsonl,
test_predictions.json, and every tensor and value of checkpoints/last.pt and best.pt, the saved config apart
(paths inside it made relative; a resumed run's differs from a straight one's by its folder and its options). Compare two checkouts:

    python bench/fingerprint_runs.py --repo /path/to/old/checkout --work /tmp/old
    python bench/fingerprint_runs.py --work /tmp/new --against /tmp/old/fingerprints.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers.shards import write_shard_folder

RUN_ARGS = ["--size", "tiny", "--epochs", "3", "--batch-size", "8", "--seed", "1", "--device", "cpu", "--no-dvclive"]  # fmt: skip


def _cli(repo: Path, args: list[str], launcher: list[str] | None = None) -> None:
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    command = [*(launcher or [sys.executable]), "-m", "pipeline.cli", *args]
    result = subprocess.run(command, env=env, cwd=repo, capture_output=True, text=True, check=False)
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")


def train_all(repo: Path, work: Path) -> dict[str, Path]:
    """The runs, each trained once (a rerun keeps the finished ones)."""
    data = {}
    for features in ("raw", "cached"):
        data[features] = work / f"data_{features}"
        if not data[features].exists():
            counts = {"train": 24, "validation": 12, "test": 12}
            write_shard_folder(data[features] / "shards" / features, features, counts=counts, shard_size=8)
    runs = {}

    def train(name: str, features: str, method: str, *extra: str, launcher=None) -> Path:
        out = work / "runs" / name
        args = ["train", "--features", features, "--data", str(data[features]), "--out", str(out)]
        _cli(repo, [*args, "--method", method, *RUN_ARGS, *extra], launcher)
        return out

    for features in ("raw", "cached"):
        for method in ("mlb", "mla"):
            name = f"{features}-{method}"
            if not (work / "runs" / f"{name}-full" / "metrics.json").exists():
                runs[f"{name}-full"] = train(f"{name}-full", features, method)
            if not (work / "runs" / f"{name}-resumed" / "metrics.json").exists():
                train(f"{name}-resumed", features, method, "--max-steps", "4", "--checkpoint-every", "2")
                train(f"{name}-resumed", features, method, "--checkpoint-every", "2", "--resume")
            runs[f"{name}-full"] = work / "runs" / f"{name}-full"
            runs[f"{name}-resumed"] = work / "runs" / f"{name}-resumed"
    if not (work / "runs" / "raw-mlb-2proc" / "metrics.json").exists():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                    "127.0.0.1", "--master_port", str(port)]  # fmt: skip
        train("raw-mlb-2proc", "raw", "mlb", launcher=torchrun)
    runs["raw-mlb-2proc"] = work / "runs" / "raw-mlb-2proc"
    return runs


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _flatten(obj, prefix: str, out: dict[str, str], work: Path) -> None:
    if torch.is_tensor(obj):
        raw = obj.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        out[prefix] = f"{_digest(raw)} {tuple(obj.shape)} {obj.dtype}"
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            _flatten(obj[key], f"{prefix}.{key}", out, work)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _flatten(value, f"{prefix}[{i}]", out, work)
    else:
        out[prefix] = repr(obj).replace(str(work), "WORK")


def fingerprint(run: Path, work: Path) -> dict[str, str]:
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["training"].pop("seconds_this_process", None)
    found = {"metrics.json": _digest(json.dumps(metrics, sort_keys=True).encode())}
    for name in ("steps.jsonl", "test_predictions.json"):
        found[name] = _digest((run / name).read_bytes())
    epochs = [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()]
    for epoch in epochs:
        epoch.pop("seconds", None)  # wall-clock time, like metrics.json's
    found["epochs.jsonl"] = _digest(json.dumps(epochs, sort_keys=True).encode())
    for name in ("last.pt", "best.pt"):
        saved = torch.load(run / "checkpoints" / name, weights_only=True)
        for part, keys in (("", [k for k in saved if k != "config"]), (" config", ["config"])):
            flat: dict[str, str] = {}
            _flatten({k: saved[k] for k in keys}, "", flat, work)
            found[name + part] = _digest(json.dumps(flat, sort_keys=True).encode())
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose `mlbpipe train` runs")
    parser.add_argument(
        "--work", type=Path, required=True, help="folder for the shards, runs and fingerprints"
    )
    parser.add_argument("--against", type=Path, help="fingerprints.json of another checkout to compare with")
    args = parser.parse_args()
    work = args.work.resolve()
    runs = train_all(args.repo.resolve(), work)
    prints = {name: fingerprint(run, work) for name, run in sorted(runs.items())}
    (work / "fingerprints.json").write_text(json.dumps(prints, indent=1, sort_keys=True))
    print(f"wrote {work / 'fingerprints.json'}")
    for name in sorted(n.removesuffix("-full") for n in prints if n.endswith("-full")):
        full, resumed = prints[f"{name}-full"], prints[f"{name}-resumed"]
        differ = sorted(k for k in full if full[k] != resumed[k] and not k.endswith("config"))
        print(f"{name}: resumed == straight through except {differ or 'nothing'}")
    if args.against:
        other = json.loads(args.against.read_text())
        differ = {n: [k for k, v in p.items() if other.get(n, {}).get(k) != v] for n, p in prints.items()}
        for name, keys in differ.items():
            print(f"{name}: {'identical' if not keys else 'DIFFERS in ' + ', '.join(keys)}")
        sys.exit(1 if any(differ.values()) else 0)


if __name__ == "__main__":
    main()
