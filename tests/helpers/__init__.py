"""What several test modules share; a test module never imports another (tests/test_suite_imports.py checks).

- `helpers.shards`: tiny contract-compliant shard folders, written with tarfile + numpy only;
- `helpers.models`: tiny models the builders do not make;
- `helpers.media`: tiny WAV, MP4 and FLV files whose content a test can read back, and a Git LFS pointer;
- `helpers.corpora`: a 4-clip corpus in the CREMA-D layout with its manifest (faces and features stages);
- `helpers.balancer_state`: the balancer state round trip every method is held to;
- `helpers.effb2`: EfficientNet-B2s of HSEmotion's architecture with seeded weights, and their ONNX exports.

Import the module you need (`from helpers.media import make_flv`): this file imports nothing, so that a
script that only needs shards (bench/gpu_check.sh) does not pull in the media libraries.
"""
