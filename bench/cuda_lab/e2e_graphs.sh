#!/usr/bin/env bash
# The training step graphs in the real trainer, on the GPU: the same run with graphs and with
# BHASA_TRAIN_GRAPHS=0 must give the same metrics and weights. Put bins.tar.xz (bhasa,
# tinyshakespeare.txt) next to it.
d=$(cd "$(dirname "$0")" && pwd); w=/tmp/gcheck; mkdir -p $w; tar -xJf $d/bins.tar.xz -C $w
c='"eval_every": 50, "eval_batches": 10, "save_every": 100, "keep_epochs": 0, "sample_tokens": 64, "d_model": 256, "n_layer": 6, "dt_rank": 16, "dropout": 0.0, "warmup": 50, "lr": 3e-3, "min_lr": 3e-4, "max_steps": 300'
echo "{$c}" > /tmp/g.json
for g in 1 0; do
  BHASA_TRAIN_GRAPHS=$g timeout 100 $w/bhasa train --device cuda --data $w/tinyshakespeare.txt --out /tmp/g$g --preset char10m --config /tmp/g.json > /tmp/g$g.log 2>&1; echo "graphs=$g rc=$?"; tail -n 2 /tmp/g$g.log
done
python3 - <<'P'
import json
a=[json.loads(l) for l in open('/tmp/g1/metrics.jsonl')]; b=[json.loads(l) for l in open('/tmp/g0/metrics.jsonl')]
keys=['loss','grad_norm','val_loss']
diff=[(r['step'],k) for r,s in zip(a,b) for k in keys if r.get(k)!=s.get(k)]
print("rows", len(a), len(b), "differing fields", len(diff), diff[:5])
print("last", {k:a[-1].get(k) for k in ['step','loss','val_loss','tokens_per_s']}, "eager", {k:b[-1].get(k) for k in ['step','loss','val_loss','tokens_per_s']})
print("median tokens/s graphs", sorted(r['tokens_per_s'] for r in a)[len(a)//2], "eager", sorted(r['tokens_per_s'] for r in b)[len(b)//2])
P
cmp /tmp/g1/final/model.safetensors /tmp/g0/final/model.safetensors && echo "final weights identical"
