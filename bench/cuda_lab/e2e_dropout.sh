#!/usr/bin/env bash
# Dropout on the H200: the CUDA dropout tests, then char-level tinyshakespeare runs with
# --dropout (bench/results/h200_quality.md, "Dropout"). Same layout as e2e_run.sh: this
# script inside the carried folder with bhasa, test_cuda, lib/ and tinyshakespeare.txt.
d=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH=$d/lib:${LD_LIBRARY_PATH:-}
B=$d/bhasa; O=${OUT:-/tmp/out}; mkdir -p $O
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $O/runs.log
# test_cuda reads the fixtures from the absolute tests/data path it was built with.
[[ -d /work/main/tests/data ]] || { mkdir -p /work && ln -s "$(pwd)" /work/main; }
timeout 60 $d/test_cuda --gtest_filter='CudaDropout*:CudaFixture*' 2>&1 | tail -n 30 | tee -a $O/runs.log
one() {  # one NAME MINUTES JSON
  echo "$3" > /tmp/$1.json
  echo "=== $1 $3" >> $O/runs.log
  timeout 60 $B train --device cuda --data $d/tinyshakespeare.txt --out /tmp/$1 --preset char10m --config /tmp/$1.json \
    --max-minutes $2 --sample-every-epochs 0 > /tmp/$1.log 2>&1
  head -1 /tmp/$1.log >> $O/runs.log; grep -E "val_loss|best|rror|done" /tmp/$1.log | tail -n 4 >> $O/runs.log
  cp /tmp/$1/metrics.jsonl $O/metrics_$1.jsonl
}
c='"eval_every": 100, "save_every": 100000, "keep_epochs": 0, "sample_tokens": 0'
c5='"d_model": 256, "n_layer": 6, "dt_rank": 16'
one d1 0.75 "{$c, $c5, \"dropout\": 0.2, \"warmup\": 100, \"lr\": 3e-3, \"min_lr\": 3e-4, \"max_steps\": 2400}"
one d2 0.75 "{$c, \"dropout\": 0.2, \"warmup\": 100, \"lr\": 2e-3, \"min_lr\": 2e-4, \"max_steps\": 1600}"
one d3 0.5 "{$c, $c5, \"dropout\": 0.1, \"warmup\": 100, \"lr\": 3e-3, \"min_lr\": 3e-4, \"max_steps\": 1500}"
cat $O/runs.log
