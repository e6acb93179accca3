"""`mlbpipe doctor`: what this machine has, so a user can see why something will not run.

Reports package versions, compute devices, whether the frozen extractors' weights are available
locally (nothing is downloaded), free disk space, and whether a corpus root looks like CREMA-D.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import typer

PACKAGES = (
    "torch",
    "torchaudio",
    "torchvision",
    "numpy",
    "av",
    "soundfile",
    "opencv-python-headless",
    "webdataset",
    "transformers",
    "efficientnet-pytorch",
    "facenet-pytorch",
    "h5py",
    "dvc",
    "dvclive",
    "typer",
)
WAV2VEC2_DEFAULT = "facebook/wav2vec2-large-robust"
LFS_HEADER = b"version https://git-lfs.github.com/spec/v1"


@dataclass
class Check:
    name: str
    status: str  # "ok", "warn" (works, but not as well as it could) or "fail" (something will not run)
    detail: str


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str, *, warn_only: bool = False) -> None:
        self.checks.append(Check(name, "ok" if ok else "warn" if warn_only else "fail", detail))

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_packages(report: DoctorReport) -> None:
    for dist in PACKAGES:
        version = _version(dist)
        fix = (
            "pip install --no-deps facenet-pytorch==2.6.0"
            if dist == "facenet-pytorch"
            else "make test (sets up .venv)"
        )
        report.add(f"package {dist}", version is not None, version or f"missing: {fix}")


def check_devices(report: DoctorReport) -> None:
    import torch

    report.add("device cpu", True, f"{torch.get_num_threads()} threads")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            report.add(f"device cuda:{i}", True, f"{props.name}, {props.total_memory / 2**30:.0f} GiB")
    else:
        report.add("device cuda", True, "none (training runs on the CPU)")


def check_weights(report: DoctorReport, wav2vec2: str = WAV2VEC2_DEFAULT) -> None:
    """Look for extractor weights in local caches only (never downloads)."""
    from huggingface_hub import try_to_load_from_cache

    if Path(wav2vec2).is_dir():
        found = (Path(wav2vec2) / "config.json").is_file()
        where = wav2vec2
    else:
        hit = try_to_load_from_cache(wav2vec2, "config.json")
        found = isinstance(hit, str)
        where = hit if found else f"{wav2vec2} not in the Hugging Face cache"
    report.add(
        "weights wav2vec2",
        found,
        where
        if found
        else f"{where}: download it once online (huggingface-cli download {wav2vec2}) or pass a local folder; "
        "the demo uses a random-init model instead",
        warn_only=True,
    )

    import torch

    ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
    hits = sorted(ckpt_dir.glob("efficientnet-b2-*.pth")) if ckpt_dir.is_dir() else []
    report.add(
        "weights efficientnet-b2",
        bool(hits),
        str(hits[0])
        if hits
        else f"not in {ckpt_dir}: download it once online, or pass weights_path=FILE; "
        "the demo uses a random-init model instead",
        warn_only=True,
    )


def check_disk(report: DoctorReport, path: Path, need_gib: float = 5.0) -> None:
    free = shutil.disk_usage(path if path.exists() else Path.cwd()).free / 2**30
    report.add(
        "disk free",
        free >= need_gib,
        f"{free:.1f} GiB free at {path}"
        + ("" if free >= need_gib else f" (under {need_gib:.0f} GiB: the real corpus needs more)"),
        warn_only=True,
    )


def check_corpus(report: DoctorReport, root: Path) -> None:
    """Does `root` look like a CREMA-D copy (AudioWAV/*.wav, VideoFlash/*.flv, media not LFS stubs)?"""
    if not root.is_dir():
        report.add("corpus root", False, f"{root} is not a folder")
        return
    for folder, ext in (("AudioWAV", ".wav"), ("VideoFlash", ".flv")):
        files = sorted((root / folder).glob(f"*{ext}")) if (root / folder).is_dir() else []
        if not files:
            report.add(f"corpus {folder}", False, f"no {root / folder}/*{ext}: is {root} a CREMA-D copy?")
            continue
        sample = files[:: max(1, len(files) // 50)]
        stubs = sum(
            1 for f in sample if f.stat().st_size < 1024 and f.read_bytes()[: len(LFS_HEADER)] == LFS_HEADER
        )
        detail = f"{len(files)} files (real CREMA-D: 7442)"
        if stubs:
            detail += f"; {stubs} of {len(sample)} sampled are Git LFS pointer stubs: run git lfs pull"
        report.add(f"corpus {folder}", stubs == 0, detail)
    demographics = root / "VideoDemographics.csv"
    report.add(
        "corpus VideoDemographics.csv",
        demographics.is_file(),
        f"{demographics} {'found' if demographics.is_file() else 'missing'}",
    )


def run_doctor(root: Path | None = None, wav2vec2: str = WAV2VEC2_DEFAULT) -> DoctorReport:
    report = DoctorReport()
    check_packages(report)
    check_devices(report)
    check_weights(report, wav2vec2)
    check_disk(report, root or Path.cwd())
    if root is not None:
        check_corpus(report, root)
    return report


def cli(
    root: Path = typer.Option(None, "--root", help="A corpus root to check for the CREMA-D layout."),
    wav2vec2: str = typer.Option(
        WAV2VEC2_DEFAULT, "--wav2vec2", help="Wav2Vec2 hub id or local folder to look for."
    ),
) -> None:
    """Report versions, devices, local extractor weights, free disk and whether a corpus root looks like
    CREMA-D. Nothing is downloaded. Exits 1 when a check fails (warnings do not fail)."""
    report = run_doctor(root, wav2vec2)
    width = max(len(c.name) for c in report.checks)
    for c in report.checks:
        typer.echo(f"{c.status:<4}  {c.name:<{width}}  {c.detail}")
    raise typer.Exit(0 if report.ok else 1)
