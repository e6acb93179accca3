#!/bin/bash
# Stand-ins of AVE and UCF101 prepared with their authors' settings (frames at 96 px for the CPU), then
# Joint, Multi-Loss and MLB over 3 seeds (each head's accuracy is in the tables), with each corpus's MLB defaults from
# meta.json. The tables docs/corpora/index.md quotes are WORK/runs_ave/compare.md and WORK/runs_ucf101/compare.md (copies in
# bench/results/compare_ave.md, compare_ucf101.md).
# Usage: bash bench/compare_corpora.sh [WORK]   (about an hour on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
W=${1:-/tmp/mlbpipe-corpora}
mkdir -p "$W"
export HF_HUB_OFFLINE=1
start=$(date +%s)
say() { echo "$1 $(( $(date +%s) - start )) s"; }
$PY -m pipeline.cli synth ave "$W/ave_root" --videos-per-category 10 --width 320 --height 180 --workers 2 > "$W/synth_ave.log" 2>&1
say "synth ave"
# 10 of the 51 classes: with all 51 (7 training clips each) nothing is learnt in a CPU budget
$PY -m pipeline.cli synth ucf101 "$W/ucf101_root" --classes 10 --groups 5 --clips-per-group 4 --workers 2 > "$W/synth_ucf101.log" 2>&1
say "synth ucf101"
for c in ave ucf101; do
  $PY -m pipeline.cli prepare $c --root "$W/${c}_root" --out "$W/$c" --size 96 --workers 2 --quiet > "$W/prep_$c.log" 2>&1
  say "prepare $c"
done
for c in ave:8 ucf101:20; do  # corpus:epochs
  e=${c#*:}; c=${c%:*}
  $PY -m pipeline.cli compare --data "$W/$c" --features raw --methods joint,multi-loss,mlb \
    --fusions late-linear --seeds 0,1,2 --epochs "$e" --size small --out "$W/runs_$c" > "$W/compare_$c.log" 2>&1
  say "compare $c"
done
