"""A synthetic UCF101 in the exact layout of a real copy, so the whole pipeline runs with no dataset:
`generate` plans the clips and writes the corpus with its split files (`synth_ucf101`, `SynthConfig`),
`render` makes the sound and the pictures, `media` writes the AVI files."""

from pipeline.corpora.ucf101.synth.generate import SynthConfig, SynthSummary, synth_ucf101

__all__ = ["SynthConfig", "SynthSummary", "synth_ucf101"]
