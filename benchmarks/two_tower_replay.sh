#!/bin/bash
# Incremental two-tower with replay, one arm (BENCHMARKS §8 "Session 7"): rerun day D of a warm lake from the
# two_tower stage on a hard-link copy, so every arm warm-starts from the same D-1 model, then evaluate D.
#   benchmarks/two_tower_replay.sh WARM_LAKE OUT_DIR NAME [--set key=value ...]
#   e.g. benchmarks/two_tower_replay.sh /work/bench_s6/run_small_warm/lake /work/worlds/ttreplay_runs r1 --set two_tower.replay_ratio=1
# two_tower runs alone first (its process's CPU is the stage's), then the rest; then
#   python benchmarks/two_tower_replay_table.py OUT_DIR/NAME ...   prints the figures.
set -e
SRC=$1; OUT=$2; NAME=$3; shift 3
D=${DAY:-2026-02-07}
CODE=$(cd "$(dirname "$0")/.." && pwd)
R=$OUT/$NAME
rm -rf "$R"; mkdir -p "$R"
cp -al "$SRC" "$R/lake"
# hard-linked locks and logs would be shared with the source otherwise (the product publishes by rename)
(cd "$R/lake" && rm -rf _locks && for f in $(find _logs _runs -type f); do cp --remove-destination "$f" "$f.tmp" && mv "$f.tmp" "$f"; done)
cd "$CODE"
echo "start $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg) args $*" > "$R/info"
/usr/bin/time -v env PYTHONPATH="$CODE" nice -n 5 python -m jobs.cli run --lake "$R/lake" --date "$D" --stage two_tower \
  --set spark.master=local[2] "$@" > "$R/tt.out" 2>&1
/usr/bin/time -v env PYTHONPATH="$CODE" nice -n 5 python -m jobs.cli run --lake "$R/lake" --date "$D" --from-stage similarity \
  --set spark.master=local[2] "$@" > "$R/run.out" 2>&1
echo "run_end $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$R/info"
env PYTHONPATH="$CODE" nice -n 5 python -m jobs.cli evaluate --lake "$R/lake" --date "$D" --json \
  --set spark.master=local[2] > "$R/eval.json" 2> "$R/eval.out"
echo "eval_end $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$R/info"
