"""A synthetic CREMA-D in the exact layout of a real copy, so the whole pipeline runs with no dataset:
`generate` chooses the clips and writes the corpus (`synth_cremad`, `SynthConfig`), `voice` and `face` make
the sound and the pictures, `media` writes the WAV and FLV files."""

from pipeline.corpora.cremad.synth.generate import SynthConfig, SynthSummary, synth_cremad

__all__ = ["SynthConfig", "SynthSummary", "synth_cremad"]
