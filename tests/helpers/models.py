"""Tiny models for balancing tests that the builders do not make (docs/CONTRACTS.md, "Models")."""

from __future__ import annotations

import torch

from mlb.models import ConformerEncoder, LateLinear, MultimodalModel


def three_modality_model_and_batch(batch_size: int = 5):
    """M = 3: three tiny Conformer encoders (modalities "a", "b", "c") and a Late-Linear fusion, with a
    random batch of `[B, 7, 5]` sequences and labels of 4 classes."""
    torch.manual_seed(0)
    mods, dim, c = ("a", "b", "c"), 8, 4
    encoders = {
        m: ConformerEncoder(5, dim=dim, num_layers=1, heads=2, ffn_dim=8, conv_kernel=3, dropout=0.0)
        for m in mods
    }
    model = MultimodalModel(
        encoders,
        LateLinear(mods, dim, c),
        {m: torch.nn.Linear(dim, c) for m in mods},
        fusion_name="late-linear",
    )
    g = torch.Generator().manual_seed(1)
    batch = {m: torch.randn(batch_size, 7, 5, generator=g) for m in mods}
    batch["label"] = torch.randint(0, c, (batch_size,), generator=g)
    return model, batch


DIMS = {"audio": 5, "video": 7}  # the cached path's feature sizes in `random_inputs`


def random_inputs(features: str, generator: torch.Generator, b: int, short_audio: dict[int, int]) -> dict:
    """A random batch's inputs for the tiny models, labels left to the caller: raw spectrograms `[B, 1, 32, 24]`
    and 3 frames `[B, 3, 3, 32, 32]`, or cached sequences `[B, 9, 5]` / `[B, 4, 7]` with masks, where
    `short_audio` {row: length} shortens some audio rows (drawn in this order, so a seed gives one batch)."""
    if features == "raw":
        return {
            "audio": torch.randn(b, 1, 32, 24, generator=generator),
            "video": torch.randn(b, 3, 3, 32, 32, generator=generator),
        }
    mask = torch.ones(b, 9, dtype=torch.bool)
    for row, length in short_audio.items():
        mask[row, length:] = False
    return {
        "audio": torch.randn(b, 9, 5, generator=generator),
        "audio_mask": mask,
        "video": torch.randn(b, 4, 7, generator=generator),
        "video_mask": torch.ones(b, 4, dtype=torch.bool),
    }
