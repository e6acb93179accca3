"""mlb: Multi-Loss Balanced (MLB) multimodal training: models, fusion heads, balancing methods, shard
loading, the trainer and its metrics. It knows nothing about `pipeline/`."""

__version__ = "0.1.0"
