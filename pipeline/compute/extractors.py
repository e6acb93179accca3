"""Frozen feature extractors of the cached (Conformer) input path: EfficientNet-B2 on face crops and
Wav2Vec2 on 16 kHz audio.

Shaped like Lhotse's feature extractors: a small config dataclass that pins what produces the features
(model, weights, layer, input size, dtype) plus an extractor object whose `extract(batch)` is a pure
function of its input. Storage is a separate step (the features stage).

Weights never download silently in tests: every way of loading is explicit in the config.

- `EffNetB2Config.weights`: `"imagenet"` (downloads the efficientnet-pytorch release file once, needs
  network), a path to a local weights file (a state_dict, `.safetensors`, or an ONNX export such as
  HSEmotion's emotion-trained `enet_b2_8_best.onnx`: pipeline.compute.effb2_weights), or `"random"` (seeded
  initialisation, labelled `random_init: true` in the shard metadata).
- `Wav2Vec2Config.model`: a Hugging Face hub id (e.g. `facebook/wav2vec2-large-robust`, needs network or
  the local HF cache), a local folder holding `config.json` + weights, or `"random-tiny"` (a tiny seeded
  random model, see `tiny_wav2vec2_config`, for tests and the demo).

"Layer 12" of Wav2Vec2, exactly: the output of the 12th transformer block of the encoder (1-based),
which is `hidden_states[12]` of the full model's `output_hidden_states` (entry 0 being the input of the
first block). For stable-layer-norm models (wav2vec2-large-robust) this is the residual stream *before*
the encoder's final LayerNorm: the full model applies that LayerNorm only after its last block, so a
model truncated to 12 blocks would return a different `last_hidden_state`. We drop the blocks after
`layer` to save compute and read the block's output with a forward hook, which gives exactly
`hidden_states[layer]` of the full model (the tests check this).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlb.common.contract import IMAGENET_MEAN, IMAGENET_STD
from pipeline.compute.effb2_weights import load_state_dict_file, weights_format

EFFNET_B2_NAME = "efficientnet-b2"
EFFNET_B2_DIM = 1408  # channels of B2's last feature map
EFFNET_B2_IMAGENET_URL = (
    "https://github.com/lukemelas/EfficientNet-PyTorch/releases/download/1.0/efficientnet-b2-8bb594d6.pth"
)
WAV2VEC2_SAMPLE_RATE = 16000
RANDOM_TINY = "random-tiny"
DTYPES = ("float32", "float16", "bfloat16")


class ExtractorConfigError(ValueError):
    """A feature extractor config key has a value we cannot use."""


class WeightsUnavailableError(ValueError):
    """The config names weights that are not on this machine and cannot be downloaded (a ValueError, so
    that every CLI reports it as a config error, without a traceback)."""


# --- devices and precision ----------------------------------------------------------------------------


def resolve_device(device: str = "auto") -> str:
    """The device name the extractors use (mlb.common.device.resolve_device, as a string: "cpu", "cuda", "cuda:1")."""
    from mlb.common.device import resolve_device as resolve

    return str(resolve(device))


def autocast_context(device: str, dtype: str):
    """fp16/bf16 autocast on CUDA; on CPU the extractors always compute in float32 (CPU autocast is
    slower than float32 on most CPUs and would change the numbers for little gain)."""
    import contextlib

    import torch

    if device.startswith("cuda") and dtype != "float32":
        return torch.autocast("cuda", dtype=getattr(torch, dtype))
    return contextlib.nullcontext()


def _check_dtype(key: str, dtype: str) -> None:
    if dtype not in DTYPES:
        raise ExtractorConfigError(f"{key}={dtype!r}: expected one of {', '.join(DTYPES)}")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --- EfficientNet-B2 ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EffNetB2Config:
    """EfficientNet-B2 on face crops, frozen, global average pooled to 1408-d per frame.

    weights: "imagenet" (download once, needs network), a path to a local weights file, or "random" (seeded
        random initialisation, for demos and tests). A file is a state_dict (`.pth`, loaded with
        `weights_only=True`, or `.safetensors`) or an ONNX export of a TF-ported B2 (`.onnx`, e.g.
        HSEmotion's AffectNet-8 `enet_b2_8_best.onnx`, the authors' face features: docs/paper-inputs.md).
    image_size: crops are resized to this square size; B2's native size is 260 (the authors' face features
        used 224).
    dtype: autocast dtype on CUDA ("float16", "bfloat16" or "float32"); CPU always computes in float32.
    seed: seed of the random initialisation when weights="random".
    """

    weights: str = "imagenet"
    image_size: int = 260
    dtype: str = "float16"
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.weights, str) or not self.weights:
            raise ExtractorConfigError(
                f"effb2.weights={self.weights!r}: expected 'imagenet', 'random' or a file path"
            )
        if not isinstance(self.image_size, int) or self.image_size < 32:
            raise ExtractorConfigError(f"effb2.image_size={self.image_size!r}: expected an int >= 32")
        _check_dtype("effb2.dtype", self.dtype)


def effb2_weights_fix() -> str:
    """How to get the EfficientNet-B2 ImageNet weights onto a machine without network, with the keys that
    `--set` and params.yaml take (the features stage's error and `mlbpipe doctor` say the same)."""
    import torch

    cached = Path(torch.hub.get_dir()) / "checkpoints" / EFFNET_B2_IMAGENET_URL.rsplit("/", 1)[1]
    return (
        f"on a machine with network download efficientnet-pytorch's release file {EFFNET_B2_IMAGENET_URL} "
        f"(`curl -LO {EFFNET_B2_IMAGENET_URL}`), then put it at {cached} (where efficientnet-pytorch and "
        "mlbpipe look for it) or pass its path to `mlbpipe prepare`: `--set features.effb2.weights=FILE` "
        "(or --effb2-weights FILE; params.yaml: features: {effb2: {weights: FILE}})"
    )


def w2v2_weights_fix(model: str) -> str:
    """How to get a Wav2Vec2 checkpoint onto a machine without network (as `effb2_weights_fix`)."""
    return (
        f"on a machine with network run `hf download {model} --local-dir DIR` (the hf command of "
        "huggingface_hub), copy DIR here and pass it to `mlbpipe prepare`: `--set features.w2v2.model=DIR` "
        "(or --w2v2-model DIR; params.yaml: features: {w2v2: {model: DIR}}); or, online, run it here without "
        "--local-dir: the model lands in the Hugging Face cache, where mlbpipe finds it by its id"
    )


def _imagenet_state_dict_effnet_b2() -> dict:
    """The efficientnet-pytorch ImageNet weights for B2, from torch's hub cache or downloaded into it."""
    import torch

    try:
        return torch.hub.load_state_dict_from_url(
            EFFNET_B2_IMAGENET_URL, map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a bad hash is a RuntimeError
        raise WeightsUnavailableError(
            f"effb2.weights='imagenet': cannot download the EfficientNet-B2 ImageNet weights ({err}). Fix: "
            f"{effb2_weights_fix()}. For a demo without real weights use `--set features.effb2.weights=random` "
            "(features are then meaningless and labelled random_init in the shard metadata)."
        ) from err


def _seeded_random_init(model, seed: int, image_size: int) -> None:
    """Kaiming-normal (fan-in) weights from `seed`, then the head conv rescaled so that its output has unit
    variance on seeded noise. PyTorch's default init shrinks activations through B2's 23 blocks to
    ~1e-13 and even Kaiming leaves ~1e-4: float16 storage would flush such features to (sub)normal zeros."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            fan_in = module.weight[0].numel()  # in_channels / groups * kernel area
            with torch.no_grad():
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
    model.eval()
    noise = torch.randn(2, 3, image_size, image_size, generator=generator)  # [2, 3, S, S]
    captured = []
    handle = model._conv_head.register_forward_hook(lambda mod, args, out: captured.append(out))
    with torch.no_grad():
        model.extract_features(noise)
        model._conv_head.weight.div_(captured[0].std())
    handle.remove()


def build_effnet_b2(config: EffNetB2Config):
    """The frozen EfficientNet-B2 module (eval mode, no gradients) that `config` describes, on CPU."""
    from efficientnet_pytorch import EfficientNet

    # from_name builds the architecture only; image_size sets the static "same" padding of its convs.
    model = EfficientNet.from_name(EFFNET_B2_NAME, image_size=config.image_size)
    if config.weights == "random":
        _seeded_random_init(model, config.seed, config.image_size)
    elif config.weights == "imagenet":
        state_dict = _imagenet_state_dict_effnet_b2()
    else:  # a file is looked for only here, when the features stage starts: the other stages never need it
        if not Path(config.weights).is_file():
            where = (
                "HSEmotion's emotion-trained B2: docs/paper-inputs.md says where to download it"
                if config.weights.endswith(".onnx")
                else "expected 'imagenet', 'random' or a path to an EfficientNet-B2 weights file"
            )
            raise ExtractorConfigError(f"effb2.weights={config.weights!r}: no such file ({where})")
        state_dict = load_state_dict_file(config.weights, model)
    if config.weights != "random":
        # The classifier (_fc) is never used; a headless state_dict is fine, and so is another classifier
        # (HSEmotion's has 8 classes), so it is left out before loading.
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("_fc.")}
        try:
            missing, unexpected = model.load_state_dict(state_dict, strict=False)
        except RuntimeError as err:  # tensors of other shapes: another network
            shapes = str(err).splitlines()[-1].strip()
            raise ExtractorConfigError(
                f"effb2.weights={config.weights!r}: not an EfficientNet-B2 state_dict ({shapes})"
            ) from err
        missing = [k for k in missing if not k.startswith("_fc.")]
        if missing or unexpected:
            raise ExtractorConfigError(
                f"effb2.weights={config.weights!r}: not an EfficientNet-B2 state_dict "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
    model.eval()
    model.requires_grad_(False)
    return model


class EffNetB2Extractor:
    """`extract(crops)`: uint8 RGB crops `[N, H, W, 3]` → float32 features `[N, 1408]`."""

    dim = EFFNET_B2_DIM

    def __init__(self, config: EffNetB2Config, device: str = "auto", model=None):
        import torch

        self.config = config
        self.device = resolve_device(device)
        # channels_last: ~30% faster convolutions on CPU (measured), and what tensor cores want on CUDA
        model = model if model is not None else build_effnet_b2(config)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def identity(self) -> dict:
        """What produced the features, for `meta.json` (a trainer refuses features of another kind)."""
        weights = self.config.weights
        source = {}
        if weights == "random":
            weights_id = f"random:seed={self.config.seed}"
        elif weights == "imagenet":
            weights_id = EFFNET_B2_IMAGENET_URL
        else:
            weights_id = f"sha256:{file_sha256(weights)}"
            # The file's name says which weights they were (enet_b2_8_best.onnx: HSEmotion's AffectNet-8).
            source = {"weights_file": Path(weights).name, "weights_format": weights_format(weights)}
        return {
            "model": EFFNET_B2_NAME,
            "library": "efficientnet-pytorch",
            "weights": weights_id,
            **source,
            "random_init": weights == "random",
            "input_size": self.config.image_size,
            "pooling": "global-average",
            "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "dim": EFFNET_B2_DIM,
            "compute_dtype": self.config.dtype if self.device.startswith("cuda") else "float32",
        }

    def extract(self, crops: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
            raise ValueError(f"crops: expected uint8 [N, H, W, 3], got {crops.dtype} {crops.shape}")
        if len(crops) == 0:
            return np.zeros((0, EFFNET_B2_DIM), np.float32)
        size = self.config.image_size
        with torch.inference_mode(), autocast_context(self.device, self.config.dtype):
            x = torch.from_numpy(crops).to(self.device).permute(0, 3, 1, 2).float() / 255.0  # [N, 3, H, W]
            if x.shape[-2:] != (size, size):
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
            fmap = self.model.extract_features(x)  # [N, 1408, h, w]
            pooled = fmap.float().mean(dim=(2, 3))  # [N, 1408]
        return pooled.cpu().numpy()


# --- Wav2Vec2 -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wav2Vec2Config:
    """transformers Wav2Vec2, frozen, eval mode; the output of transformer block `layer` (see module doc).

    model: a Hugging Face hub id (e.g. "facebook/wav2vec2-large-robust"), a local folder with
        `config.json` + weights, or "random-tiny" (a tiny seeded random model for tests and demos).
    layer: 1-based transformer block whose output we keep, `hidden_states[layer]` of the full model.
    dtype: autocast dtype on CUDA ("float16", "bfloat16" or "float32"); CPU always computes in float32.
    normalize: zero-mean unit-variance each waveform first, as Wav2Vec2FeatureExtractor(do_normalize=True)
        does for the large/robust checkpoints.
    seed: seed of the "random-tiny" initialisation.
    """

    model: str = "facebook/wav2vec2-large-robust"
    layer: int = 12
    dtype: str = "float16"
    normalize: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ExtractorConfigError(
                f"w2v2.model={self.model!r}: expected a hub id, a folder or 'random-tiny'"
            )
        if not isinstance(self.layer, int) or self.layer < 1:
            raise ExtractorConfigError(
                f"w2v2.layer={self.layer!r}: expected an int >= 1 (1-based block index)"
            )
        _check_dtype("w2v2.dtype", self.dtype)


def tiny_wav2vec2_config(num_hidden_layers: int = 12):
    """A tiny Wav2Vec2 (hidden 32) with the real model's conv strides (50 frames/s) and stable layer norm
    like wav2vec2-large-robust, with 12 blocks so that "layer 12" exists. Seconds on CPU, for tests."""
    from transformers import Wav2Vec2Config as HFWav2Vec2Config

    return HFWav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32,) * 7,
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_bias=True,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        layerdrop=0.0,
        vocab_size=32,
    )


def random_tiny_wav2vec2(seed: int = 0, num_hidden_layers: int = 12):
    """The seeded random tiny Wav2Vec2Model (eval mode)."""
    import torch
    from transformers import Wav2Vec2Model

    torch.manual_seed(seed)
    config = tiny_wav2vec2_config(num_hidden_layers)
    # Saved into config.json by save_pretrained, so a folder of random weights stays labelled as such.
    config.mlbpipe_random_init = True
    return Wav2Vec2Model(config).eval()


def write_tiny_wav2vec2(folder: str | Path, seed: int = 0, num_hidden_layers: int = 12) -> Path:
    """Save the seeded random tiny Wav2Vec2 (config.json + safetensors weights) to `folder`, so tests and
    the demo load it back through the same `from_pretrained(folder)` path as a real checkpoint."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    random_tiny_wav2vec2(seed, num_hidden_layers).save_pretrained(folder)
    return folder


def _load_wav2vec2_model(config: Wav2Vec2Config):
    from transformers import Wav2Vec2Model

    if config.model == RANDOM_TINY:
        return random_tiny_wav2vec2(config.seed)
    if Path(config.model).exists():
        if not (Path(config.model) / "config.json").is_file():
            raise ExtractorConfigError(f"w2v2.model={config.model!r}: folder has no config.json")
        return Wav2Vec2Model.from_pretrained(config.model)
    try:
        return Wav2Vec2Model.from_pretrained(config.model)
    except OSError as err:  # offline and not in the HF cache, or the id does not exist
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise WeightsUnavailableError(
            f"w2v2.model={config.model!r}: cannot load it ({'HF_HUB_OFFLINE is set; ' if offline else ''}{err}). "
            f"Fix: {w2v2_weights_fix(config.model)}. For a demo without real weights use "
            "`--set features.w2v2.model=random-tiny` (features are then meaningless and labelled random_init in "
            "the shard metadata)."
        ) from err


def build_wav2vec2(config: Wav2Vec2Config):
    """The frozen Wav2Vec2Model truncated to its first `config.layer` blocks (eval mode), on CPU."""
    model = _load_wav2vec2_model(config)
    n_layers = len(model.encoder.layers)
    if config.layer > n_layers:
        raise ExtractorConfigError(
            f"w2v2.layer={config.layer}: model {config.model!r} has only {n_layers} layers"
        )
    # Blocks after `layer` cannot change its output: drop them (half the compute for the 24-layer model).
    model.encoder.layers = model.encoder.layers[: config.layer]
    model.config.num_hidden_layers = config.layer
    model.eval()  # also disables LayerDrop, which would skip blocks at random
    model.requires_grad_(False)
    return model


class Wav2Vec2Extractor:
    """`extract(waves)`: list of float32 mono 16 kHz waveforms `[S_i]` → list of `[T_i, D]` float32."""

    sample_rate = WAV2VEC2_SAMPLE_RATE

    def __init__(self, config: Wav2Vec2Config, device: str = "auto", model=None):
        self.config = config
        self.device = resolve_device(device)
        self.model = (model if model is not None else build_wav2vec2(config)).to(self.device).eval()
        self.dim = self.model.config.hidden_size
        # A group-norm feature encoder (wav2vec2-base) normalises over time, padding included: such models
        # must see one clip at a time to give the same features batched or not.
        self.can_pad = self.model.config.feat_extract_norm == "layer"
        self._captured = None
        self.model.encoder.layers[config.layer - 1].register_forward_hook(self._capture)

    def _capture(self, module, args, output) -> None:
        self._captured = output[0] if isinstance(output, tuple) else output  # [B, T, D]

    def identity(self) -> dict:
        """What produced the features, for `meta.json` (a trainer refuses features of another kind)."""
        model = self.config.model
        if model == RANDOM_TINY:
            weights_id = f"random-tiny:seed={self.config.seed}"
        elif Path(model).is_dir():
            files = sorted(Path(model).glob("*.safetensors")) or sorted(Path(model).glob("*.bin"))
            weights_id = (
                "sha256:" + hashlib.sha256("".join(file_sha256(f) for f in files).encode()).hexdigest()
            )
        else:  # a hub id: pin the exact revision that was loaded
            weights_id = (
                f"hf:{model}@{getattr(self.model.config, '_commit_hash', None) or 'unknown-revision'}"
            )
        return {
            "model": Path(model).name if Path(model).is_dir() else model,
            "library": "transformers",
            "weights": weights_id,
            "random_init": bool(getattr(self.model.config, "mlbpipe_random_init", False)),
            "layer": self.config.layer,
            "layer_definition": "output of transformer block `layer` (1-based) = hidden_states[layer] of the "
            "full model, before the encoder's final LayerNorm for stable-layer-norm models",
            "sample_rate": WAV2VEC2_SAMPLE_RATE,
            "normalize": self.config.normalize,
            "dim": self.dim,
            "frame_rate": WAV2VEC2_SAMPLE_RATE / int(np.prod(self.model.config.conv_stride)),
            "compute_dtype": self.config.dtype if self.device.startswith("cuda") else "float32",
        }

    def output_length(self, num_samples: int) -> int:
        """Frames the conv feature encoder makes of `num_samples` samples."""
        import torch

        return int(self.model._get_feat_extract_output_lengths(torch.tensor(num_samples)))

    def extract(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        if not self.can_pad and len(waves) > 1:
            return [out for wave in waves for out in self.extract([wave])]
        return self._extract_padded(waves)

    def _extract_padded(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        if not waves:
            return []
        lengths = [len(w) for w in waves]
        if min(lengths) < 400:  # the conv encoder's receptive field: 25 ms at 16 kHz
            raise ValueError(f"waves: every waveform needs >= 400 samples, got lengths {lengths}")
        batch = np.zeros((len(waves), max(lengths)), np.float32)  # [B, S]
        mask = np.zeros((len(waves), max(lengths)), np.int64)  # [B, S], 1 on real samples
        for i, wave in enumerate(waves):
            wave = np.asarray(wave, np.float32)
            if self.config.normalize:
                wave = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
            batch[i, : len(wave)] = wave
            mask[i, : len(wave)] = 1
        with torch.inference_mode(), autocast_context(self.device, self.config.dtype):
            x = torch.from_numpy(batch).to(self.device)
            attention_mask = torch.from_numpy(mask).to(self.device) if self.can_pad else None
            self._captured = None
            self.model(x, attention_mask=attention_mask)
            hidden = self._captured.float().cpu().numpy()  # [B, T_max, D]
        return [hidden[i, : self.output_length(n)] for i, n in enumerate(lengths)]
