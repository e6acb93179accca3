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
