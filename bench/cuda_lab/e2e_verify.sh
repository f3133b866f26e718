#!/usr/bin/env bash
# One device call that verifies a tree end to end on the H200 (what the closing notes'
# numbers come from): all GPU tests, the m130 training step beside an older binary, the op
# profile, the scan lab, decode, a tinyshakespeare run (1.47 / best), generate and eval.
# Put bins.tar.xz next to it, holding: bhasa, test_cuda, cuda_lab, cuda_decode (stripped;
# bench/cuda_lab/run.sh shows how the labs link), bhasa_base (the binary to compare with,
# e.g. the previous session's final), tinyshakespeare.txt and val.txt (its last 111540
# bytes); run with LD_LIBRARY_PATH holding
# the shared libraries the device lacks (OpenBLAS, PCRE2, readline, httplib).
d=$(cd "$(dirname "$0")" && pwd); w=/tmp/final; mkdir -p $w; tar -xJf $d/bins.tar.xz -C $w
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
echo "== [$SECONDS s] test_cuda (all)"
timeout 200 $w/test_cuda 2>&1 | grep -E "^\[  (FAILED|PASSED) |Failure|tests from .* ran|training bf16|training tf32|worst gradient" | head -30
echo "== [$SECONDS s] bench train m130 16x2048, 10 steps: base vs main"
for r in 1 2; do for v in base main; do b=$w/bhasa; [ $v = base ] && b=$w/bhasa_base
  echo "-- $v ($r): $(timeout 60 $b bench train --preset m130 --batch 16 --seq-len 2048 --steps 10 --device cuda 2>&1 | grep -oE '"(step_s|tokens_per_s|activation_mb|forward_s)":[0-9.]+' | tr '\n' ' ')"
done; done
echo "-- main tf32: $(timeout 60 $w/bhasa bench train --preset m130 --batch 16 --seq-len 2048 --steps 10 --device cuda --precision tf32 2>&1 | grep -oE '"(step_s|tokens_per_s)":[0-9.]+' | tr '\n' ' ')"
echo "== [$SECONDS s] op profile (main, 5 steps)"
BHASA_CUDA_PROFILE=1 timeout 60 $w/bhasa bench train --preset m130 --batch 16 --seq-len 2048 --steps 5 --device cuda 2>&1 | grep -E "^\|" | head -40
echo "== [$SECONDS s] scan lab"
LAB_SCAN_ONE_CHUNK=1 timeout 40 $w/cuda_lab scan 2>&1 | tail -n 8
echo "== [$SECONDS s] decode (tf32, bf16)"
timeout 60 $w/cuda_decode tf32 bf16 2>&1 | grep -E "decode B|^cuda"
DECODE_BATCHES="16 32" timeout 60 $w/cuda_decode bf16 2>&1 | grep -E "decode B"
echo "== [$SECONDS s] tinyshakespeare (c5 d256x6, dropout .3, lr 3e-3, 64x256, bf16; max 1200 steps)"
c='"eval_every": 50, "eval_batches": 20, "save_every": 100000, "keep_epochs": 0, "sample_tokens": 0'
c5='"d_model": 256, "n_layer": 6, "dt_rank": 16'
echo "{$c, $c5, \"dropout\": 0.3, \"warmup\": 100, \"lr\": 3e-3, \"min_lr\": 3e-4, \"max_steps\": 1200}" > /tmp/e1.json
timeout 90 $w/bhasa train --device cuda --data $w/tinyshakespeare.txt --out /tmp/e1 --preset char10m --config /tmp/e1.json \
  --max-minutes 0.75 --sample-every-epochs 0 > /tmp/e1.log 2>&1; echo "rc $?"
grep -E "best|rror|done" /tmp/e1.log | tail -n 3
python3 - <<'P'
import json
rows=[json.loads(l) for l in open('/tmp/e1/metrics.jsonl')]
ev=[r for r in rows if 'val_loss' in r]
print("evals", len(ev), "best", min(r['val_loss'] for r in ev) if ev else None)
first=[r for r in ev if r['val_loss']<=1.47]
print("first <= 1.47:", {k:first[0].get(k) for k in ('step','val_loss','time_s')} if first else None)
print("keys", sorted(ev[0].keys()) if ev else None)
P
echo "== [$SECONDS s] generate / eval"
timeout 30 $w/bhasa generate --device cuda --model /tmp/e1/final --prompt "ROMEO:" --max-new-tokens 400 --stats 2>&1 | tail -n 3
timeout 30 $w/bhasa eval --device cuda --model /tmp/e1/final --data $w/val.txt --seq-len 256 --batch 64 --json 2>&1 | tail -n 2
echo "== [$SECONDS s] done"
