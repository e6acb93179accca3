"""What the preparation pipeline (`pipeline/`) and the training harness (`mlb.train`) both use and neither owns:
the shard contract's constants, atomic writes, folder locks, graceful stops, storage URLs, device resolution.
Imports nothing else of the project."""
