"""A synthetic AVE in the exact layout of a real copy, so the whole pipeline runs with no dataset:
`generate` plans the videos and rows and writes the corpus (`synth_ave`, `SynthConfig`), `scene` makes the
sound and the pictures with each category's cue, `media` writes the MP4 files."""

from pipeline.corpora.ave.synth.generate import SynthConfig, SynthSummary, synth_ave

__all__ = ["SynthConfig", "SynthSummary", "synth_ave"]
