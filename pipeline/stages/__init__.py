"""The preparation stages, one module per DVC stage: a `<Stage>Config` dataclass (every default of the stage,
once) and a pure core `run_<stage>(...)` that reads its inputs and writes its output. No stage knows a
corpus by name, imports another stage, or prints: `pipeline.prepare` runs them in order, and the command
line (pipeline.cli) prints what they return.

    index -> frames + spectrograms -> shards_raw          (ResNet path)
          -> faces -> features -> shards_cached          (Conformer path)
"""
