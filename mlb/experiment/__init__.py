"""Many training runs as one experiment, the paper's protocol: equal-budget hyper-parameter search on
validation (`tune`), and methods x fusion heads x seeds or folds trained with one budget (`sweep`, what
`mlbpipe compare` trains). Each run is `mlb.train.train`."""
