"""Synthetic corpora in the exact layout of real ones, so the whole pipeline runs with no dataset.

- `cremad`: the CREMA-D layout (`synth_cremad`, `SynthConfig`); `voice` and `face` make the sound and the
  pictures; `media` writes WAV and FLV files.
"""

from pipeline.synth.cremad import SynthConfig, SynthSummary, synth_cremad

__all__ = ["SynthConfig", "SynthSummary", "synth_cremad"]
