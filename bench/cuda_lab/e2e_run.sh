#!/usr/bin/env bash
# End-to-end bhasa on the H200: carried binary + shared libs (see bench/cuda_lab/NOTES.md).
# What ran for bench/results/h200_quality.md. Put this script, bhasa, cuda_decode (bench/cuda_lab/decode.cpp
# linked against the CUDA libbhasa.a), lib/ (the .so files the device lacks: ldd bhasa) and
# tinyshakespeare.txt + val.txt (its last 111540 bytes) into one ignored folder, e.g. build/e2e3;
# carry that folder and run `bash build/e2e3/e2e_run.sh` there. Logs and metrics go to $OUT.
d=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH=$d/lib:${LD_LIBRARY_PATH:-}
B=$d/bhasa
O=${OUT:-/tmp/out}; mkdir -p $O
nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv 2>&1 | tee $O/bench_char10m.pre
# 1. step time of the char model, to size max_steps to the time budget
timeout 60 $B bench train --preset char10m --batch 64 --seq-len 256 --device cuda --steps 10 2>&1 | tee $O/bench_char10m.log; cat $O/bench_char10m.pre >> $O/bench_char10m.log; rm $O/bench_char10m.pre
step_s=$(python3 -c "import json,sys;print([json.loads(l) for l in open('$O/bench_char10m.log') if l.startswith('{')][-1]['step_s'])" 2>/dev/null || echo 0.05)
stepsA=$(python3 -c "print(max(500,min(6000,int(150/($step_s*1.12)))))")
echo "step_s=$step_s stepsA=$stepsA" | tee -a $O/bench_char10m.log
# 2a. main run: char10m shape, lr 2e-3, schedule sized to ~150 s, guard 3 min
cat > /tmp/a.json <<J
{"lr": 2e-3, "min_lr": 2e-4, "warmup": 100, "eval_every": 100, "save_every": 100000, "max_steps": $stepsA}
J
timeout 220 $B train --device cuda --data $d/tinyshakespeare.txt --out /tmp/runA --preset char10m --config /tmp/a.json \
  --max-minutes 3 --sample-every-epochs 0 2>&1 | tee $O/trainA.log
cp /tmp/runA/metrics.jsonl $O/metricsA.jsonl
# 2b. short schedule (1500 steps, nanoGPT's step count at 1.47), guard 1.2 min
cat > /tmp/b.json <<J
{"lr": 2e-3, "min_lr": 2e-4, "warmup": 100, "eval_every": 100, "save_every": 100000, "max_steps": 1500}
J
timeout 100 $B train --device cuda --data $d/tinyshakespeare.txt --out /tmp/runB --preset char10m --config /tmp/b.json \
  --max-minutes 1.2 --sample-every-epochs 0 2>&1 | tee $O/trainB.log
cp /tmp/runB/metrics.jsonl $O/metricsB.jsonl
# 3. generate and eval from run A's final checkpoint on the GPU
{ timeout 60 $B generate --device cuda --model /tmp/runA/final --prompt "ROMEO:" --max-new-tokens 200 --stats 2>&1
  echo; echo "--- eval (val split) ---"
  timeout 60 $B eval --device cuda --model /tmp/runA/final --data $d/val.txt --seq-len 256 --batch 64 --json 2>&1
} | tee $O/generate_eval.log
# 4. m130 training-step bench and the decode bench
{ timeout 90 $B bench train --preset m130 --batch 16 --seq-len 2048 --device cuda --steps 5 2>&1
  echo "--- decode ---"; timeout 60 $d/cuda_decode 2>&1; } | tee $O/bench_m130.log
