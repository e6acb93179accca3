"""Reading one split from S3: WebDataset shards (one GET per shard) against one object per clip (one GET per
clip), through a local S3-compatible endpoint, and whether either keeps up with the training step.

The same synthetic cached-feature clips as bench/bench_loader.py (CREMA-D-like Wav2Vec2 `[~150, 768]` and
EfficientNet-B2 `[~75, 1408]`, float16) are uploaded to moto's S3 server (a separate process on 127.0.0.1,
so it does not share this process's GIL) twice: as the split's shards, and as one single-clip tar per clip
(the same member bytes). Both layouts are read with the SAME code after the GET (`mlb.data.read_tar_samples`,
`decode_sample`, `to_example`, `collate`), the same batch size and the same number of loader workers:
- shards: `mlb.data.ShardLoader` over `s3://bench/shards` (what `mlbpipe train --data s3://...` runs);
- per clip: a map-style Dataset whose `__getitem__` GETs one clip object, shuffled by torch's DataLoader;
- reference: the same shards on the local disk (page cache warm).
Requests are counted from the server's access log. Then `mlb.train.step.train_step` (MLB, late-linear, the
model size given) runs on the same batches on this CPU: its samples/s is what the loader must deliver.

Every figure is the median of `--repeats` epochs; the layouts are timed in turns each repeat, so a drift
of the machine's load hits them alike; ratios are against the per-clip layout measured in the same run.
A local endpoint answers in well under a millisecond: on a remote store, where each request waits tens of
milliseconds for its first byte, the per-clip layout loses far more than here (see the request counts).

    .venv/bin/python bench/bench_s3.py                          # 400 clips, shards of 100, 3 repeats
    .venv/bin/python bench/bench_s3.py --clips 800 --workers 2 --size paper
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loader import AUDIO_DIM, VIDEO_DIM, _add, write_both_layouts

from mlb.data import ShardLoader, collate, decode_sample, open_shard_folder, read_tar_samples, to_example

BUCKET = "bench"


class MotoServer:
    """moto's S3 server in a child process on a free loopback port; its access log counts the requests."""

    def __init__(self, log: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._log_file = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:  # ready when it accepts a connection
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start; see {log}") from None
                time.sleep(0.2)
        self._seen = 0

    def requests(self) -> dict[str, int]:
        """Requests by HTTP method since the last call (werkzeug writes one line per request)."""
        time.sleep(0.2)  # the last line may land just after the client has its answer
        lines = self.log.read_text().splitlines()
        new, self._seen = lines[self._seen :], len(lines)
        counts: dict[str, int] = {}
        for line in new:
            if '"' in line:
                method = line.split('"')[1].split(" ", 1)[0]
                counts[method] = counts.get(method, 0) + 1
        return counts

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self._log_file.close()


def upload(client, shards: Path) -> list[str]:
    """The shard folder to s3://bench/shards/, and each clip as its own tar to s3://bench/clips/<id>.tar;
    returns the per-clip URLs."""
    urls = []
    for path in sorted(shards.iterdir()):
        client.put_object(Bucket=BUCKET, Key=f"shards/{path.name}", Body=path.read_bytes())
        if path.suffix != ".tar":
            continue
        with tarfile.open(path) as tar:
            members: dict[str, list[tuple[str, bytes]]] = {}
            for member in tar:
                members.setdefault(member.name.split(".", 1)[0], []).append(
                    (member.name, tar.extractfile(member).read())
                )
        for key, items in members.items():
            with tempfile.SpooledTemporaryFile() as buffer:
                with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as clip_tar:
                    for name, data in items:
                        _add(clip_tar, name, data)
                buffer.seek(0)
                client.put_object(Bucket=BUCKET, Key=f"clips/{key}.tar", Body=buffer.read())
            urls.append(f"s3://{BUCKET}/clips/{key}.tar")
    return urls


class PerClipObjects(torch.utils.data.Dataset):
    """One object per clip: `__getitem__` GETs it (one request) and decodes it as the shard path does."""

    def __init__(self, urls: list[str], folder) -> None:
        self.urls, self.folder = urls, folder

    def __len__(self) -> int:
        return len(self.urls)

    def __getitem__(self, index: int) -> dict:
        (sample,) = read_tar_samples(iter([{"url": self.urls[index]}]))
        return to_example(decode_sample(sample, self.folder), self.folder)


def time_epoch(batches) -> tuple[int, float]:
    start, samples = time.perf_counter(), 0
    for batch in batches:
        samples += len(batch["id"])
    return samples, time.perf_counter() - start


def step_rate(batches: list[dict], size: str, repeats: int, device: torch.device) -> float:
    """Median samples/s of `mlb.train.step.train_step` (MLB, late-linear, Adam; fp32 on CPU, bf16 autocast on
    CUDA as the trainer's `auto`) over the batches."""
    from mlb.balancing import build_balancer
    from mlb.models import build_model
    from mlb.train.step import StepContext, to_device, train_step

    torch.manual_seed(0)
    balancer = build_balancer("mlb", alpha=5.0, beta_max=2.0)
    model = build_model(
        features="cached",
        fusion="late-linear",
        num_classes=6,
        size=size,
        input_dims={"audio": AUDIO_DIM, "video": VIDEO_DIM},
        **balancer.model_options(),
    ).to(device)
    balancer.check_model(model)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=5e-5)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    amp = torch.bfloat16 if device.type == "cuda" else None
    batches = [to_device(b, device) for b in batches]
    ctx = StepContext(model, balancer, optimizer, scaler, parameters, device, amp)

    def run(chunk):
        start = time.perf_counter()
        for batch in chunk:
            train_step(ctx, batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return sum(len(b["id"]) for b in chunk) / (time.perf_counter() - start)

    run(batches[:1])  # warm-up (allocator, first-call costs)
    return statistics.median(run(batches) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=400)
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="epochs per layout; the median is kept")
    parser.add_argument("--size", default="small", choices=("tiny", "small", "paper"), help="model size")
    parser.add_argument("--step-batches", type=int, default=4, help="batches per timed train_step run")
    parser.add_argument("--device", default="cpu", help="where train_step runs (cpu, cuda)")
    # One thread: on a shared 2-core machine two torch threads made the step 7x slower, not faster.
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the data (default: temp)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    root = Path(tempfile.mkdtemp(prefix="bench_s3_", dir=args.dir))
    server = None
    try:
        server = MotoServer(root / "moto.log")
        os.environ.update(
            AWS_ENDPOINT_URL=server.endpoint,
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
        )
        os.environ.pop("AWS_ENDPOINT_URL_S3", None)
        import boto3

        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        t0 = time.perf_counter()
        shards, per_file = write_both_layouts(root, args.clips, args.shard_size, args.seed)
        shutil.rmtree(per_file)  # bench_loader's two-files-per-clip layout: not used here
        clip_urls = upload(client, shards)
        megabytes = sum(p.stat().st_size for p in shards.glob("*.tar")) / 1e6
        num_shards = len(list(shards.glob("*.tar")))
        print(
            f"{args.clips} clips ({megabytes:.0f} MB) uploaded to {server.endpoint} as {num_shards} shards and as "
            f"{len(clip_urls)} per-clip objects in {time.perf_counter() - t0:.1f} s; batch {args.batch_size}, "
            f"{args.workers} worker(s), median of {args.repeats}"
        )
        server.requests()
        remote = open_shard_folder(f"s3://{BUCKET}/shards")
        opened = server.requests()
        local = open_shard_folder(shards)
        collate_cached = functools.partial(collate, input_path="cached")

        def shard_batches(folder, epoch):
            return ShardLoader(
                folder, "train", args.batch_size, shuffle=True, seed=args.seed, num_workers=args.workers,
                shuffle_buffer=256,
            ).iterate(epoch)  # fmt: skip

        def per_clip_batches(epoch):
            return torch.utils.data.DataLoader(
                PerClipObjects(clip_urls, remote),
                batch_size=args.batch_size,
                shuffle=True,
                num_workers=args.workers,
                generator=torch.Generator().manual_seed(args.seed * 1000 + epoch),
                collate_fn=collate_cached,
            )

        layouts = {
            "per-clip objects (S3)": per_clip_batches,
            "shards (S3)": functools.partial(shard_batches, remote),
            "shards (local disk, warm)": functools.partial(shard_batches, local),
        }
        rates: dict[str, list[float]] = {name: [] for name in layouts}
        requests: dict[str, dict[str, int]] = {}
        time_epoch(shard_batches(local, 99))  # the local copy into the page cache
        for repeat in range(args.repeats):
            names = list(layouts)
            names = names[repeat % len(names) :] + names[: repeat % len(names)]  # rotate the order
            for name in names:
                server.requests()
                samples, seconds = time_epoch(layouts[name](repeat))
                assert samples == args.clips, (name, samples)
                rates[name].append(samples / seconds)
                requests[name] = server.requests()
        median = {name: statistics.median(values) for name, values in rates.items()}
        baseline = median["per-clip objects (S3)"]
        print(f"  opening the S3 shard folder: {opened} (one listing + meta/sizes/stats.json)")
        print(f"  {'layout':28s} {'samples/s':>10s} {'requests/epoch':>15s} {'vs per-clip':>12s}")
        for name, rate in median.items():
            count = sum(requests[name].values())
            detail = ", ".join(f"{n} {m}" for m, n in sorted(requests[name].items())) or "-"
            print(f"  {name:28s} {rate:10.1f} {count:>6d} ({detail:>6s}) {rate / baseline:11.2f}x")

        # What the loader must keep up with: the training step on the same batches.
        step_batches = [b for _, b in zip(range(args.step_batches), shard_batches(local, 0))]
        device = torch.device(args.device)
        step = step_rate(step_batches, args.size, args.repeats, device)
        print(
            f"  train_step (MLB, late-linear, size {args.size}, {device}, {torch.get_num_threads()} thread(s)): "
            f"{step:.1f} samples/s"
        )
        for name in ("shards (S3)", "per-clip objects (S3)"):
            ratio = median[name] / step
            verdict = (
                "keeps up"
                if ratio >= 1
                else f"starves the step: it waits {100 * (1 - ratio):.0f}% of the time"
            )
            print(f"  {name} / train_step = {ratio:.2f}x: the loader {verdict}")
        print(
            "  (on one process the loader and the step share the CPU; loader workers run beside the step, so a "
            "loader/step ratio >= 1 with --workers N means no wait)"
        )
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
