"""Loader throughput: cached-feature WebDataset shards versus one `.npy` file per clip and modality.

The authors' code keeps every clip's frozen features as separate `.npy` files and reads them in a
map-style `Dataset.__getitem__`. mlbpipe streams the same arrays from tar shards (`mlb.data`). This
bench writes the same synthetic clips both ways (CREMA-D-like sizes: Wav2Vec2 `[~150, 768]` and
EfficientNet-B2 `[~75, 1408]`, float16) and times one shuffled epoch of each with the SAME decode
(`np.load(..., allow_pickle=False)`), the same normalisation (`mlb.data.to_example`), the same padding
collate (`mlb.data.collate`), the same batch size and the same number of workers.

Two cache states, because they decide the result:
- warm: every file already in the page cache (a second epoch on a machine with spare memory);
- cold: the bench's own files evicted first with `posix_fadvise(DONTNEED)` (first epoch, or a data set
  larger than memory). No root needed and no other file is touched.

    .venv/bin/python bench/bench_loader.py                       # CPU, 1000 clips
    .venv/bin/python bench/bench_loader.py --clips 3000 --workers 4 --device cuda --train-step

`--device cuda` also moves every batch to the GPU (pinned memory) and synchronises, so the figure is
samples/s delivered to the GPU, and samples the GPU's utilisation with nvidia-smi during each epoch; `--train-step` adds a training step of the paper-size Conformer model
with MLB on each batch, to see whether the loader keeps the GPU busy.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlb.data import ShardLoader, collate, decode_sample, open_shard_folder, to_example

AUDIO_DIM, VIDEO_DIM = 768, 1408


def make_clip(rng: np.random.Generator) -> dict[str, np.ndarray]:
    t_a, t_v = int(rng.integers(100, 200)), int(rng.integers(50, 100))  # ~2-4 s at 50 Hz / 25 fps
    return {
        "w2v2.npy": rng.normal(size=(t_a, AUDIO_DIM)).astype(np.float16),
        "effb2.npy": rng.normal(size=(t_v, VIDEO_DIM)).astype(np.float16),
    }


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_both_layouts(root: Path, clips: int, shard_size: int, seed: int) -> tuple[Path, Path]:
    """The same clips as (a) WebDataset shards and (b) one .npy file per clip and modality + labels.json."""
    shards, per_file = root / "shards", root / "per_file"
    (per_file / "w2v2").mkdir(parents=True)
    (per_file / "effb2").mkdir(parents=True)
    shards.mkdir()
    rng = np.random.default_rng(seed)
    sizes, labels = {}, {}
    for first in range(0, clips, shard_size):
        name = f"train-{first // shard_size:06d}.tar"
        with tarfile.open(shards / name, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(first, min(first + shard_size, clips)):
                clip_id, label = f"clip{i:06d}", i % 6
                for field, array in make_clip(rng).items():
                    data = _npy(array)
                    _add(tar, f"{clip_id}.{field}", data)
                    (per_file / field.removesuffix(".npy") / f"{clip_id}.npy").write_bytes(data)
                _add(tar, f"{clip_id}.json", json.dumps({"id": clip_id, "label": label}).encode())
                labels[clip_id] = label
        sizes[name] = min(first + shard_size, clips) - first
    meta = {
        "input_path": "cached",
        "corpus": "bench",
        "num_classes": 6,
        "label_names": list("ABCDEF"),
        "fields": {
            "w2v2.npy": {"dtype": "float16", "shape": ["T_a", AUDIO_DIM]},
            "effb2.npy": {"dtype": "float16", "shape": ["T_v", VIDEO_DIM]},
        },
    }
    stats = {
        "w2v2": {"mean": [0.0] * AUDIO_DIM, "std": [1.0] * AUDIO_DIM},
        "effb2": {"mean": [0.0] * VIDEO_DIM, "std": [1.0] * VIDEO_DIM},
    }
    for name, obj in (("sizes.json", sizes), ("meta.json", meta), ("stats.json", stats)):
        (shards / name).write_text(json.dumps(obj))
    (per_file / "labels.json").write_text(json.dumps(labels))
    return shards, per_file


class PerFileDataset(torch.utils.data.Dataset):
    """The authors' layout: `__getitem__` opens one .npy per modality. Same decode and normalisation."""

    def __init__(self, root: Path, folder) -> None:
        self.root, self.folder = root, folder
        self.labels = json.loads((root / "labels.json").read_text())
        self.ids = sorted(self.labels)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        clip_id = self.ids[index]
        sample = {"__key__": clip_id, "json": {"id": clip_id, "label": self.labels[clip_id]}}
        for field in ("w2v2", "effb2"):
            sample[f"{field}.npy"] = np.load(self.root / field / f"{clip_id}.npy", allow_pickle=False)
        return to_example(sample, self.folder)


def evict(root: Path) -> None:
    """Drop this bench's files from the page cache (clean pages only; nothing else is touched)."""
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def io_only(data_root: Path, shuffled: bool, seed: int) -> float:
    """Seconds to read every byte once with no decoding: tars front to back member by member, or the
    per-clip files in a shuffled order (as a shuffling map-style loader would)."""
    start = time.perf_counter()
    if not shuffled:
        for path in sorted(data_root.glob("*.tar")):
            with tarfile.open(path, "r:") as tar:  # as mlb.data.read_tar_samples reads them
                for member in tar:
                    if member.isreg():
                        tar.extractfile(member).read()
    else:
        files = sorted(data_root.rglob("*.npy"))
        for i in np.random.default_rng(seed).permutation(len(files)):
            files[i].read_bytes()
    return time.perf_counter() - start


class GpuBusy:
    """Mean GPU utilisation (%) while the block runs, sampled by `nvidia-smi -lms 100` in the background
    (the share of time a kernel was running). `percent` is None where nvidia-smi is missing."""

    def __init__(self, device: torch.device):
        self.index = device.index if device.index is not None else 0
        self.percent: float | None = None

    def __enter__(self):
        try:
            self.process = subprocess.Popen(
                [
                    "nvidia-smi",
                    f"--id={self.index}",
                    "--query-gpu=utilization.gpu",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    "100",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError:
            self.process = None
        return self

    def __exit__(self, *exc):
        if self.process is None:
            return
        self.process.terminate()
        out, _ = self.process.communicate(timeout=10)
        samples = [float(line) for line in out.split() if line.strip().replace(".", "", 1).isdigit()]
        self.percent = sum(samples) / len(samples) if samples else None


def time_epoch(batches, device: torch.device, step=None) -> tuple[int, float]:
    start, samples = time.perf_counter(), 0
    for batch in batches:
        if device.type == "cuda":
            batch = {
                k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
            }
            if step is not None:
                step(batch)
            torch.cuda.synchronize()
        samples += len(batch["id"])
    return samples, time.perf_counter() - start


def make_train_step(device: torch.device):
    """A paper-size Conformer + Late-Linear training step with MLB, bf16 autocast."""
    from mlb.balancing import build_balancer
    from mlb.models import build_model

    model = build_model(
        features="cached",
        fusion="late-linear",
        size="paper",
        input_dims={"audio": AUDIO_DIM, "video": VIDEO_DIM},
    ).to(device)
    balancer = build_balancer("mlb", alpha=5.0, beta_max=2.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-5)

    def step(batch):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(batch)
            loss, _ = balancer.loss(model, batch, out)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        balancer.before_step(model, batch, out)
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--repeats", type=int, default=2, help="epochs timed per (layout, cache state); best kept"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--train-step", action="store_true", help="CUDA only: also run a training step per batch"
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write the data (default: a temp folder)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(1)

    root = Path(tempfile.mkdtemp(prefix="bench_loader_", dir=args.dir))
    try:
        t0 = time.perf_counter()
        shards, per_file = write_both_layouts(root, args.clips, args.shard_size, args.seed)
        megabytes = sum(p.stat().st_size for p in shards.glob("*.tar")) / 1e6
        print(
            f"wrote {args.clips} clips ({megabytes:.0f} MB of features) twice in {time.perf_counter() - t0:.1f} s; "
            f"{len(list(shards.glob('*.tar')))} shards vs {2 * args.clips} .npy files; batch {args.batch_size}, "
            f"{args.workers} worker(s), device {device}"
        )
        folder = open_shard_folder(shards)
        pin = device.type == "cuda"
        step = make_train_step(device) if args.train_step and device.type == "cuda" else None

        def shard_batches(epoch):
            loader = ShardLoader(
                folder,
                "train",
                args.batch_size,
                shuffle=True,
                seed=args.seed,
                num_workers=args.workers,
                shuffle_buffer=256,
                pin_memory=pin,
            )
            return loader.iterate(epoch)

        def per_file_batches(epoch):
            generator = torch.Generator().manual_seed(args.seed * 1000 + epoch)
            return torch.utils.data.DataLoader(
                PerFileDataset(per_file, folder),
                batch_size=args.batch_size,
                shuffle=True,
                num_workers=args.workers,
                generator=generator,
                pin_memory=pin,
                collate_fn=lambda examples: collate(examples, "cached"),
            )

        results = {}
        for cache in ("cold", "warm"):
            for name, make, data_root in (
                ("shards", shard_batches, shards),
                ("per-file", per_file_batches, per_file),
            ):
                best, busy = 0.0, None
                for repeat in range(args.repeats):
                    if cache == "cold":
                        evict(data_root)
                    else:
                        time_epoch(make(100 + repeat), torch.device("cpu"))  # prime the page cache
                    with GpuBusy(device) as gpu:
                        samples, seconds = time_epoch(make(repeat), device, step)
                    assert samples == args.clips, (name, samples)
                    if samples / seconds > best:
                        best, busy = samples / seconds, gpu.percent
                results[(cache, name)] = best
                gpu_note = (
                    f"  GPU busy {busy:.0f}% of the epoch"
                    if device.type == "cuda" and busy is not None
                    else ""
                )
                print(f"  {cache:4s} {name:8s}: {best:8.1f} samples/s{gpu_note}")
        for cache in ("cold", "warm"):
            ratio = results[(cache, "shards")] / results[(cache, "per-file")]
            print(f"{cache}: shards / per-file = {ratio:.2f}x (goal >= 5x)")
        # Reading alone (no decode, no normalisation, no batching): what the storage layout changes.
        for cache in ("cold", "warm"):
            seconds = {}
            for name, data_root, shuffled in (("shards", shards, False), ("per-file", per_file, True)):
                if cache == "cold":
                    evict(data_root)
                else:
                    io_only(data_root, shuffled, args.seed)
                seconds[name] = io_only(data_root, shuffled, args.seed)
            print(
                f"  read only, {cache}: shards {megabytes / seconds['shards']:.0f} MB/s, per-file "
                f"{megabytes / seconds['per-file']:.0f} MB/s = {seconds['per-file'] / seconds['shards']:.2f}x"
            )
        _ = decode_sample  # the shard path's decoder; the per-file path uses the same np.load call
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
