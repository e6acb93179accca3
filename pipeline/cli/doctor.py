"""`mlbpipe doctor`: what this machine has, so a user can see why something will not run.

Reports package versions, compute devices, whether the frozen extractors' weights are available locally
(nothing is downloaded), free disk space, and whether a corpus root has its corpus's layout (the corpus
plug-in's `check_layout`).
"""

from __future__ import annotations

import importlib.metadata
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import typer

from pipeline.cli.common import exit_on
from pipeline.corpora import corpus_names

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


def check_weights(report: DoctorReport, wav2vec2: str) -> None:
    """Look for extractor weights in local caches only (never downloads)."""
    from huggingface_hub import try_to_load_from_cache

    from pipeline.compute.extractors import effb2_weights_fix, w2v2_weights_fix

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
        else f"{where}: {w2v2_weights_fix(wav2vec2)}; the demo uses a random-init model instead",
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
        else f"not in {ckpt_dir}: {effb2_weights_fix()}; the demo uses a random-init model instead",
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


def check_corpus(report: DoctorReport, corpus: str, root: Path, params: dict | None = None) -> None:
    """Does `root` have the layout of `corpus` (its plug-in's check_layout; a corpus that params.yaml sets
    up, as its `corpora.<corpus>` says), and how many of the corpus's clips does it hold (a partial copy
    or a stand-in warns, a copy with none of them fails)?"""
    from pipeline.corpora import CorpusError, corpus_entry_point, corpus_for

    plugin = corpus_for(corpus, params)
    entry = corpus_entry_point(corpus)
    if entry is not None:  # an installed plug-in: which package and version the stages will run
        report.add(
            "corpus plug-in", True, f"{corpus} from {entry.dist.name} {entry.dist.version} ({entry.value})"
        )
    for check in plugin.check_layout(root):
        report.add(check.name, check.ok, check.detail, warn_only=check.warn_only)
    try:
        scan = plugin.scan(root)
    except CorpusError:  # a wrong or empty root: the layout checks above already say so
        return
    coverage = plugin.coverage(root, {clip.id for clip in scan.clips})
    if coverage is not None:
        status = "ok" if coverage.ok else "warn" if coverage.found else "fail"
        report.checks.append(Check("corpus clips", status, coverage.describe()))


def run_doctor(
    corpus: str | None = None,
    root: Path | None = None,
    wav2vec2: str | None = None,
    params: dict | None = None,
) -> DoctorReport:
    """Every check, in the order a user fixes them: packages, devices, weights, disk, the corpus root."""
    report = DoctorReport()
    check_packages(report)
    check_devices(report)
    check_weights(report, wav2vec2 or _default_wav2vec2())
    check_disk(report, root or Path.cwd())
    if root is not None:
        check_corpus(report, corpus, root, params)
    return report


def _default_wav2vec2() -> str:
    from pipeline.compute.extractors import Wav2Vec2Config

    return Wav2Vec2Config.model


def cli(
    corpus: str = typer.Option(
        None,
        "--corpus",
        metavar="CORPUS",
        help=f"The corpus whose layout --root should have: {', '.join(corpus_names())}.",
        show_default="none",
    ),
    root: Path = typer.Option(
        None, "--root", help="A corpus root to check (needs --corpus).", show_default="none: no corpus check"
    ),
    params: Path = typer.Option(
        None,
        "--params",
        metavar="FILE",
        help="A params.yaml whose corpora.CORPUS sets the corpus up (a generic corpus: its layout).",
        show_default="none",
    ),
    wav2vec2: str = typer.Option(
        None,
        "--wav2vec2",
        metavar="ID|PATH",
        help="The Wav2Vec2 model to look for: a hub id or a local folder.",
        show_default="the features stage's",
    ),
) -> None:
    """Report versions, devices, local extractor weights, free disk and whether a corpus root has its
    corpus's layout. Nothing is downloaded. Exits 1 when a check fails (warnings do not fail)."""
    from pipeline.corpora import CorpusError, corpus_for
    from pipeline.params import ParamsError, load_params

    if root is not None and corpus is None:
        raise typer.BadParameter(
            f"--root needs --corpus, one of {', '.join(corpus_names())}", param_hint="--corpus"
        )
    loaded = None
    if corpus is not None:
        with exit_on(CorpusError, ParamsError, command="mlbpipe doctor"):
            loaded = load_params(params) if params is not None else None
            corpus_for(corpus, loaded, str(params or "params.yaml"))
    report = run_doctor(corpus, root, wav2vec2, loaded)
    width = max(len(c.name) for c in report.checks)
    for c in report.checks:
        typer.echo(f"{c.status:<4}  {c.name:<{width}}  {c.detail}")
    raise typer.Exit(0 if report.ok else 1)
