"""Models: encoders (ResNet-18, Conformer), fusion heads and the multimodal model (docs/CONTRACTS.md)."""

from mlb.models.encoders import (
    SIZES,
    ConformerEncoder,
    EncoderOutput,
    ResNetFrames,
    ResNetSpectrogram,
    masked_mean,
)
from mlb.models.fusion import FUSIONS, CosineClassifier, FiLM, Gated, LateLinear, MidMLP, TransformerFusion
from mlb.models.model import ModelOutput, MultimodalModel, build_model, zero_modality

__all__ = [
    "FUSIONS",
    "SIZES",
    "ConformerEncoder",
    "CosineClassifier",
    "EncoderOutput",
    "FiLM",
    "Gated",
    "LateLinear",
    "MidMLP",
    "ModelOutput",
    "MultimodalModel",
    "ResNetFrames",
    "ResNetSpectrogram",
    "TransformerFusion",
    "build_model",
    "masked_mean",
    "zero_modality",
]
