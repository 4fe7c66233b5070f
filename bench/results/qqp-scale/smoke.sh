#!/bin/bash
# One smoke-budget search of each method on the full-size QQP folder (fixed commit, worktree), one after another
# in one storage folder; per run: rc, wall seconds, the driver's peak resident memory (VmHWM, sampled every second).
cd /work/wt/scale3   # a worktree of this repository at the commit said in README.md
export PYTHONPATH=/work/wt/scale3
S=/work/runs/qqp-scale/storage-smoke
for m in vkd pkd rkd minilm fsd; do
  start=$(date +%s)
  /work/main/.venv/bin/python tune_main.py --task qqp --method $m --preset smoke \
      --data-dir /work/runs/qqp-scale/rows-363846 --teacher packaged-minilm --student-layers 3 --storage $S \
      > /work/runs/qqp-scale/smoke-$m.txt 2>&1 &
  pid=$!
  hwm=0
  while kill -0 $pid 2>/dev/null; do
    h=$(awk '/VmHWM/ {print $2}' /proc/$pid/status 2>/dev/null); [ -n "$h" ] && hwm=$h
    sleep 1
  done
  wait $pid; rc=$?
  echo "{\"method\": \"$m\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - start )), \"driver_peak_gb\": $(echo "scale=3; $hwm/1000000" | bc)}" | tee -a /work/runs/qqp-scale/smoke.jsonl
done
