"""Pure per-clip computation: spectrogram maths, face detection and cropping, frozen feature extractors.
Nothing here reads a manifest or writes a file."""
