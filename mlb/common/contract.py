"""The shard contract's constants (docs/CONTRACTS.md, "Shards"): what the preparation pipeline writes and the
loader reads, so both take them from here."""

SPLITS = ("train", "validation", "test")
INPUT_PATHS = ("raw", "cached")  # ResNet-18 on spectrograms + frames; Conformer on frozen features

# Which shard field feeds which modality, per input path.
MODALITY_FIELDS: dict[str, dict[str, str]] = {
    "raw": {"audio": "spec.npy", "video": "frames.npy"},
    "cached": {"audio": "w2v2.npy", "video": "effb2.npy"},
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, RGB (also the frozen EfficientNet-B2 input)
IMAGENET_STD = (0.229, 0.224, 0.225)
