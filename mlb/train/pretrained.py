"""Encoders that start from unimodal runs (Uni-Pre): `init_encoders` parsed, loaded and, for the frozen
variant, held fixed.

    sources = init_encoder_sources("audio=runs/raw/audio-only/late-linear/seed0,video=...")  # config.py
    load_encoders(model, sources, features="raw", size="small")   # encoders.<m>.* and unimodal_heads.<m>.*
    freeze_encoders(model)                                         # no gradient, BatchNorm statistics kept

A source is a run folder (its `checkpoints/best.pt`, the checkpoint its validation selected) or a `.pt`
file; checkpoints load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mlb.train.checkpoint import load_checkpoint
from mlb.train.config import TrainConfigError


def load_encoders(model: nn.Module, sources: dict[str, Path], *, features: str, size: str) -> None:
    """Copy each source's `encoders.<m>.*` and `unimodal_heads.<m>.*` weights (and buffers) into `model`.
    TrainConfigError when a modality is missing, unknown, or its run used another input path or model
    size; the fusion head stays as built."""
    modalities = list(model.modalities)
    unknown, missing = sorted(set(sources) - set(modalities)), sorted(set(modalities) - set(sources))
    if unknown or missing:
        raise TrainConfigError(
            f"train config init_encoders: the model's modalities are {modalities}; "
            f"{'unknown ' + str(unknown) if unknown else ''}{'; ' if unknown and missing else ''}"
            f"{'missing ' + str(missing) if missing else ''}: give one checkpoint per modality"
        )
    own = model.state_dict()
    for modality, path in sources.items():
        saved = load_checkpoint(path, ("model", "config"))
        config = saved["config"]
        if (config.get("features"), config.get("size")) != (features, size):
            raise TrainConfigError(
                f"train config init_encoders: {path} is a {config.get('features')}/{config.get('size')} run, "
                f"this one is {features}/{size}: its encoder does not fit"
            )
        prefixes = (f"encoders.{modality}.", f"unimodal_heads.{modality}.")
        taken = {k: v for k, v in saved["model"].items() if k.startswith(prefixes)}
        wanted = {k for k in own if k.startswith(prefixes)}
        if set(taken) != wanted:
            raise TrainConfigError(
                f"train config init_encoders: {path} holds no {modality} encoder of this model's shape "
                f"({len(wanted - set(taken))} weights missing): was it trained on other shards?"
            )
        for key, value in taken.items():
            if own[key].shape != value.shape:
                raise TrainConfigError(
                    f"train config init_encoders: {path}: {key} has shape {tuple(value.shape)}, this model "
                    f"{tuple(own[key].shape)}: was it trained on other shards?"
                )
        with torch.no_grad():
            for key, value in taken.items():
                own[key].copy_(value)


def freeze_encoders(model: nn.Module) -> None:
    """The encoders get no gradient (so the trainer leaves them out of the optimiser) and their BatchNorm
    layers stop updating their running statistics: in training they normalise with the batch's own, in
    evaluation with the loaded ones. The unimodal heads and the fusion head stay trainable."""
    for encoder in model.encoders.values():
        for p in encoder.parameters():
            p.requires_grad_(False)
        for module in encoder.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.track_running_stats = False
