#!/usr/bin/env bash
d=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH=$d/lib:${LD_LIBRARY_PATH:-}
B=$d/bhasa; O=${OUT:-/tmp/out}; mkdir -p $O
[[ -d /work/main/tests/data ]] || { mkdir -p /work && ln -s "$(cd $d/../.. && pwd)" /work/main; }
timeout 200 $d/test_cuda 2>&1 | tail -n 45 > $O/test_cuda.log
one() {
  echo "$3" > /tmp/$1.json
  timeout 90 $B train --device cuda --data $d/tinyshakespeare.txt --out /tmp/$1 --preset char10m --config /tmp/$1.json \
    --max-minutes $2 --sample-every-epochs 0 > /tmp/$1.log 2>&1
  echo "=== $1 $3" >> $O/runs.log; grep -E "best|rror|done" /tmp/$1.log | tail -n 3 >> $O/runs.log
  cp /tmp/$1/metrics.jsonl $O/metrics_$1.jsonl
}
c='"eval_every": 50, "eval_batches": 20, "save_every": 100000, "keep_epochs": 0, "sample_tokens": 0'
c5='"d_model": 256, "n_layer": 6, "dt_rank": 16'
one e1 0.75 "{$c, $c5, \"dropout\": 0.3, \"warmup\": 100, \"lr\": 3e-3, \"min_lr\": 3e-4, \"max_steps\": 1200}"
one e2 0.75 "{$c, $c5, \"dropout\": 0.2, \"warmup\": 100, \"lr\": 3e-3, \"min_lr\": 3e-4, \"max_steps\": 1000}"
cat $O/runs.log; tail -5 $O/test_cuda.log
