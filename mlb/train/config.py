"""What a training run depends on: `TrainConfig`, every default of the trainer once, checked early (the key
and the value in every error). No torch at import, so the command line can show these defaults cheaply."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlb.common.contract import INPUT_PATHS
from mlb.common.storage import is_url

SIZES = ("tiny", "small", "paper")  # model sizes (mlb.models.encoders)
# Paper defaults per input path: (lr, weight decay, batch size). ResNet-18 on raw, Conformer on cached.
PAPER_OPTIM = {"raw": (1e-3, 1e-4, 32), "cached": (5e-5, 5e-6, 8)}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTO = "auto"  # a method setting left to the corpus (the shards' meta.json), else to the method's default
# Config keys that may change between an interrupted run and its resume (they do not change the math).
RESUMABLE_CHANGES = {
    "resume", "epochs", "max_steps", "device", "dvclive", "max_bad_steps", "max_skipped_fraction", "patience",
    "in_memory",
}  # fmt: skip


class TrainConfigError(ValueError):
    """A bad training setting; the message names the key and the value."""


class TrainError(RuntimeError):
    """A run that cannot go on (a checkpoint that cannot be read or written, too many non-finite steps); the
    message names the file or the count, and the fix."""


BEST = Path("checkpoints") / "best.pt"  # what a run folder given to init_encoders stands for


def init_encoder_sources(value: str) -> dict[str, Path]:
    """`"audio=PATH,video=PATH"` -> {modality: checkpoint file}; a run folder stands for its best.pt.
    TrainConfigError naming the entry and the fix for a malformed entry or a missing file."""
    sources: dict[str, Path] = {}
    for entry in [e.strip() for e in value.split(",") if e.strip()]:
        modality, sep, path = entry.partition("=")
        if not sep or not modality.strip() or not path.strip():
            raise TrainConfigError(
                f"train config init_encoders={value!r}: {entry!r} is not MODALITY=PATH "
                "(e.g. audio=RUNS/raw/audio-only/late-linear/seed0)"
            )
        checkpoint = Path(path.strip())
        checkpoint = checkpoint / BEST if checkpoint.is_dir() else checkpoint
        if not checkpoint.is_file():
            raise TrainConfigError(
                f"train config init_encoders={value!r}: {checkpoint} does not exist: train that modality "
                "alone first (--method audio-only / video-only), or give the run folder that holds it"
            )
        if modality.strip() in sources:
            raise TrainConfigError(f"train config init_encoders={value!r}: {modality.strip()!r} given twice")
        sources[modality.strip()] = checkpoint
    return sources


def setting(default: Any, help: str = "", **metadata: Any) -> Any:
    """A field with its --help text beside its default. `metadata` may add `choices` (the values allowed),
    `default_text` (what a None default means), `option` (the option's spelling, e.g. "--in-memory/--streaming"),
    `metavar` (what the value looks like, placeholders in capitals: "MODALITY=RUN,...") or `cli=False` (no
    command-line option). The command line builds its options from these (pipeline.cli.common.dataclass_options)."""
    return field(default=default, metadata={"help": help, **metadata})


_RAW, _CACHED = PAPER_OPTIM["raw"], PAPER_OPTIM["cached"]


@dataclass
class TrainConfig:
    """Everything a run depends on. `validate()` fails early, naming the key and the value."""

    data: Path | str  # the shard folder of one input path: OUT/shards/<features>/, or a URL (s3://bucket/...)
    out: Path  # the run folder RUN/
    features: str = setting(
        "cached",
        "Input path: cached (Conformer on frozen features) or raw (ResNet-18 on spectrograms + 1 fps "
        "frames).",
        choices=INPUT_PATHS,
    )
    method: str = setting(
        "mlb",
        "Balancing method: mlb, multi-loss, joint, ogm-ge, ogm, mslr, agm, pmr, mmcosine, mmpareto, reconboost, "
        "mla, gblending, dgl, mcr, dnr, uni-pre-frozen, uni-pre-finetuned, ensemble, audio-only, video-only; its own settings with --param METHOD.KEY=VALUE.",
        metavar="METHOD",
    )
    fusion: str = setting(
        "late-linear", "Fusion head: late-linear, mid-mlp, film, gated, tf.", metavar="FUSION"
    )
    # the method's own settings, e.g. {"alpha": 0.5, "beta_max": 10} (--param METHOD.KEY=VALUE)
    method_params: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})
    size: str = setting("paper", "Model size: tiny (tests), small (CPU), paper.", choices=SIZES)
    epochs: int = setting(100, "Maximum number of epochs (early stopping may end sooner).")
    max_steps: int | None = setting(
        None, "Stop training after this many steps in all.", default_text="no limit"
    )
    batch_size: int | None = setting(
        None,
        "Training batch size (the global batch under torchrun).",
        default_text=f"{_RAW[2]} raw, {_CACHED[2]} cached",
    )
    eval_batch_size: int | None = setting(
        None, "Batch size of validation and test.", default_text="the training one"
    )
    lr: float | None = setting(
        None,
        "Adam learning rate.",
        default_text=f"{_RAW[0]:g} raw (ResNet-18), {_CACHED[0]:g} cached (Conformer)",
    )
    weight_decay: float | None = setting(
        None, "Adam weight decay.", default_text=f"{_RAW[1]:g} raw, {_CACHED[1]:g} cached"
    )
    warmup_epochs: float = setting(1.0, "Constant-lr warm-up length in epochs.")
    restart_epochs: float = setting(10.0, "Length of the first cosine cycle (warm restarts) in epochs.")
    restart_mult: int = setting(1, "Each later cosine cycle is this many times longer than the one before.")
    min_lr_ratio: float = setting(0.01, "The cosine floor, as a fraction of lr.")
    grad_clip_norm: float | None = setting(
        None,
        "Clip the global gradient norm to this value at every update, after the method's own gradient "
        "changes; 0 turns a method's clipping off.",
        default_text="the method's: dgl 40, others none",
    )
    patience: int = setting(10, "Early stopping: epochs without a better validation accuracy.")
    seed: int = setting(0, "Seed of the model initialisation and the data order.")
    # which fold (data partition) this run belongs to, for the statistics; None: the seed
    fold: int | None = setting(None, cli=False)
    device: str = setting("auto", "Where to train: auto, cpu, cuda or cuda:N.", metavar="DEVICE")
    precision: str = setting(
        "auto",
        "Floating-point precision; auto: bf16 on CUDA if supported, else fp16; fp32 on CPU.",
        choices=PRECISIONS,
    )
    num_workers: int = setting(
        0,
        "Data loader worker processes (the data order depends on this number: keep it when resuming).",
        option="--workers",
    )
    in_memory: bool = setting(
        False,
        "Decode every split once and keep it in memory: the same batches, faster on a small corpus (needs "
        "--workers 0).",
        option="--in-memory/--streaming",
    )
    shuffle_buffer: int = setting(512, "Samples in the training shuffle buffer.")
    checkpoint_every: int = setting(0, "Also save checkpoints/last.pt every N steps (0: at epoch ends only).")
    resume: bool = setting(
        False,
        "Continue from RUN/checkpoints/last.pt (exactly where it stopped); starts from scratch if there is none.",
    )
    max_bad_steps: int = setting(20, "Consecutive non-finite steps before the run stops.")
    max_skipped_fraction: float = setting(0.5, "A run that skipped more of its steps (non-finite) fails.")
    dropout: float | None = setting(
        None, "Dropout of the encoders and fusion head.", default_text="the size's"
    )
    init_encoders: str | None = setting(
        None,
        "Start each encoder and its unimodal head from a unimodal RUN folder (its best checkpoint) or "
        "checkpoint file, e.g. audio=RUNS/raw/audio-only/late-linear/seed0. The uni-pre methods need it; "
        "`mlbpipe compare` gives them the same seed's or fold's audio-only and video-only runs.",
        default_text="none: every weight from scratch",
        metavar="MODALITY=RUN,...",
    )
    # extra meta.json keys to require (--expect-meta)
    expected_meta: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})
    dvclive: bool = setting(
        True, "Log every epoch with DVCLive to RUN/dvclive.", option="--dvclive/--no-dvclive"
    )
    # Where lr, weight decay and the method's settings came from, recorded in run.json for the comparison
    # tables (set by mlb.experiment.sweep): {"tuned": true, "file", "trials", "trial"} or {"tuned": false};
    # {} when nobody recorded it. Training never reads it.
    tuning: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})

    def validate(self) -> None:
        def bad(key: str, why: str) -> TrainConfigError:
            return TrainConfigError(f"train config {key}={getattr(self, key)!r}: {why}")

        if self.features not in INPUT_PATHS:
            raise bad("features", f"must be one of {INPUT_PATHS}")
        # A URL is probed when the run opens it (mlb.data.open_shard_folder): no network access here.
        if not is_url(self.data) and not Path(self.data).is_dir():
            raise bad("data", "is not a folder (expected OUT/shards/<features>/ with meta.json, sizes.json)")
        if self.size not in SIZES:
            raise bad("size", f"must be one of {SIZES}")
        for key in ("epochs", "restart_mult", "patience", "max_bad_steps"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise bad(key, "must be an integer >= 1")
        for key in ("max_steps", "batch_size", "eval_batch_size"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise bad(key, "must be an integer >= 1 (or unset)")
        if self.init_encoders is not None:
            init_encoder_sources(self.init_encoders)  # malformed, or a checkpoint that is not there
        if self.fold is not None and (not isinstance(self.fold, int) or self.fold < 0):
            raise bad("fold", "must be an integer >= 0 (or unset)")
        for key in ("num_workers", "checkpoint_every", "seed"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 0:
                raise bad(key, "must be an integer >= 0")
        if self.in_memory and self.num_workers:
            raise bad("in_memory", "needs num_workers=0 (the decoded clips live in the training process)")
        if self.shuffle_buffer < 1:
            raise bad("shuffle_buffer", "must be >= 1")
        for key in ("lr", "weight_decay"):
            value = getattr(self, key)
            if value is not None and not (
                math.isfinite(value) and value >= (0 if key == "weight_decay" else 1e-12)
            ):
                raise bad(
                    key, "must be a finite number > 0" if key == "lr" else "must be a finite number >= 0"
                )
        clip = self.grad_clip_norm
        if clip is not None and (
            isinstance(clip, bool)
            or not isinstance(clip, (int, float))
            or not (math.isfinite(clip) and clip >= 0)
        ):
            raise bad(
                "grad_clip_norm", "must be a finite number > 0, 0 (no clipping) or unset (the method's)"
            )
        if not (self.warmup_epochs >= 0 and math.isfinite(self.warmup_epochs)):
            raise bad("warmup_epochs", "must be >= 0")
        if not (self.restart_epochs > 0 and math.isfinite(self.restart_epochs)):
            raise bad("restart_epochs", "must be > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise bad("min_lr_ratio", "must be in [0, 1]")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"must be one of {PRECISIONS}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise bad("device", "must be auto, cpu, cuda or cuda:N")
        if self.device.startswith("cuda") and not _cuda_available():
            raise bad("device", "CUDA is not available on this machine")
        if not 0 < self.max_skipped_fraction <= 1:
            raise bad("max_skipped_fraction", "must be in (0, 1]")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise bad("dropout", "must be in [0, 1)")

    # Resolved values (the paper's defaults where unset)
    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else PAPER_OPTIM[self.features][0]

    @property
    def resolved_weight_decay(self) -> float:
        return self.weight_decay if self.weight_decay is not None else PAPER_OPTIM[self.features][1]

    @property
    def resolved_batch_size(self) -> int:
        return self.batch_size if self.batch_size is not None else PAPER_OPTIM[self.features][2]

    def resolved_grad_clip_norm(self, method_default: float | None) -> float | None:
        """The global gradient norm every update is clipped to: the user's setting (0: no clipping), else the
        method's own (`Balancer.grad_clip_norm`, e.g. DGL's 40); None: no clipping."""
        value = self.grad_clip_norm if self.grad_clip_norm is not None else method_default
        return float(value) if value else None

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def check_methods(methods: list[str], where: str = "method") -> None:
    """Every name is a registered balancing method (mlb.balancing.METHODS)."""
    from mlb.balancing import METHODS

    for method in methods:
        if method not in METHODS:
            raise TrainConfigError(
                f"{where} {method!r}: unknown method; choose from {', '.join(sorted(METHODS))}"
            )


def check_fusions(fusions: list[str], where: str = "fusion") -> None:
    """Every name is a fusion head (mlb.models.fusion.FUSIONS)."""
    from mlb.models.fusion import FUSIONS

    for fusion in fusions:
        if fusion not in FUSIONS:
            raise TrainConfigError(
                f"{where} {fusion!r}: unknown fusion head; choose from {', '.join(FUSIONS)}"
            )


def without_auto(params: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{method: {key: value}} less the `auto` values: those keys take the corpus's setting (the shards'
    meta.json), else the method's own default."""
    kept = {m: {k: v for k, v in values.items() if v != AUTO} for m, values in params.items()}
    return {m: values for m, values in kept.items() if values}


def check_method_params(params: dict[str, dict[str, Any]], where: str) -> None:
    """Each {method: {key: value}} names a registered method, keywords its class's __init__ takes and values the
    class accepts (`auto`: any key it takes), so that a misspelt setting fails here, before any run starts,
    instead of doing nothing. `where` (`--param`, `params.yaml: train.param`) starts every message."""
    import inspect

    from mlb.balancing import METHODS

    check_methods(list(params), where)
    for method, values in params.items():
        cls = METHODS[method]
        keywords = inspect.signature(cls.__init__).parameters.values()
        takes = [
            p.name
            for p in keywords
            if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        for key, value in values.items():
            if key not in takes:
                raise TrainConfigError(
                    f"{where} {method}.{key}={value!r}: unknown setting; {method} takes "
                    + (", ".join(takes) or "none")
                )
        try:
            cls(**{k: v for k, v in values.items() if v != AUTO})
        except (TypeError, ValueError) as err:
            raise TrainConfigError(f"{where} {method}: {err}") from None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
