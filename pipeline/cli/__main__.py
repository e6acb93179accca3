"""`python -m pipeline.cli ...` is `mlbpipe ...` (what dvc.yaml calls)."""

from pipeline.cli import main

main()
