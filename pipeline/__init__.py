"""mlbpipe's preprocessing pipeline: raw corpora to WebDataset shards, and the `mlbpipe` command line."""

__version__ = "0.1.0"
