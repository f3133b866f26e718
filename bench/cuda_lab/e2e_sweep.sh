#!/usr/bin/env bash
# Short-schedule sweep against the early overfitting seen in e2e_run.sh (best val at step 200).
# Same layout as e2e_run.sh: this script inside the carried folder with bhasa, lib/ and tinyshakespeare.txt.
d=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH=$d/lib:${LD_LIBRARY_PATH:-}
B=$d/bhasa; O=${OUT:-/tmp/out}; mkdir -p $O
one() {  # one NAME JSON
  echo "$2" > /tmp/$1.json
  echo "=== $1 $2" >> $O/sweep.log
  timeout 60 $B train --device cuda --data $d/tinyshakespeare.txt --out /tmp/$1 --preset char10m --config /tmp/$1.json \
    --max-minutes 0.8 --sample-every-epochs 0 > /tmp/$1.log 2>&1
  head -1 /tmp/$1.log >> $O/sweep.log; grep -E "val_loss|best|rror" /tmp/$1.log >> $O/sweep.log
  cp /tmp/$1/metrics.jsonl $O/metrics_$1.jsonl
}
c='"eval_every": 50, "save_every": 100000, "warmup": 50'
one c1 "{$c, \"lr\": 2e-3, \"min_lr\": 2e-4, \"max_steps\": 500}"
one c2 "{$c, \"lr\": 2e-3, \"min_lr\": 2e-4, \"max_steps\": 500, \"weight_decay\": 1.0}"
one c3 "{$c, \"lr\": 1e-3, \"min_lr\": 1e-4, \"max_steps\": 800}"
one c4 "{$c, \"lr\": 1.5e-3, \"min_lr\": 1.5e-4, \"max_steps\": 500, \"d_model\": 512, \"dt_rank\": 32}"
one c5 "{$c, \"lr\": 3e-3, \"min_lr\": 3e-4, \"max_steps\": 800, \"d_model\": 256, \"n_layer\": 6, \"dt_rank\": 16}"
one c6 "{$c, \"lr\": 2e-3, \"min_lr\": 2e-4, \"max_steps\": 300}"
cat $O/sweep.log
