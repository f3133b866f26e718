#!/usr/bin/env bash
# kill -9 trials for `bhasa train`: start a small run that checkpoints every step,
# SIGKILL it at a random instant, check that checkpoints/latest is complete and
# that running the same command again finishes with exactly the weights of an
# uninterrupted run. Usage: scripts/kill9_trials.sh [TRIALS] (BHASA_BIN=path/to/bhasa)
set -euo pipefail
trials=${1:-50}
bin=${BHASA_BIN:-build/release/bhasa}
[[ -x $bin ]] || { echo "no bhasa binary at $bin (set BHASA_BIN)" >&2; exit 2; }
work=$(mktemp -d /tmp/bhasa-kill9.XXXXXX)
trap 'rm -rf "$work"' EXIT

# A small corpus and model: each step takes milliseconds, so kills land inside steps
# and inside checkpoint writes alike.
for i in $(seq 1 400); do echo "Line $i: the river ran through the old town where people sang at night."; done > "$work/corpus.txt"
cat > "$work/tiny.json" <<'JSON'
{"d_model": 32, "n_layer": 2, "d_state": 8, "dt_rank": 4, "batch": 4, "seq_len": 32,
 "warmup": 5, "eval_batches": 2, "sample_tokens": 0}
JSON
steps=40
# exec, so that $! below is bhasa itself and not a subshell around it.
run() { exec "$bin" train --data "$work/corpus.txt" --out "$1" --config "$work/tiny.json" --max-steps $steps \
          --save-every 1 --eval-every 10 --seed 5 --threads 1 > "$1.log" 2>&1; }

start=$(date +%s%N)
(run "$work/ref")
ref_ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "reference run: $steps steps in ${ref_ms} ms"

mid_write=0
for t in $(seq 1 "$trials"); do
  out="$work/run$t"
  (run "$out") &
  pid=$!
  delay_ms=$(( ref_ms / 20 + RANDOM % (ref_ms * 9 / 10 + 1) ))
  sleep "$(printf '0.%03d' $((delay_ms % 1000)))"; sleep $((delay_ms / 1000))
  kill -9 $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
  if compgen -G "$out/checkpoints/.tmp-*" > /dev/null; then mid_write=$((mid_write + 1)); fi
  if [[ -d $out/checkpoints/latest ]]; then
    for f in config.json model.safetensors tokenizer.json optimizer.safetensors trainer_state.json; do
      [[ -s $out/checkpoints/latest/$f ]] || { echo "trial $t: latest/$f missing after kill at ${delay_ms} ms" >&2; exit 1; }
    done
  fi
  (run "$out") || { echo "trial $t: resume failed:" >&2; cat "$out.log" >&2; exit 1; }
  cmp -s "$work/ref/final/model.safetensors" "$out/final/model.safetensors" ||
    { echo "trial $t: resumed weights differ from the uninterrupted run" >&2; exit 1; }
  rm -rf "$out" "$out.log"
done
echo "ok: $trials kill -9 trials ($mid_write killed while writing a checkpoint); every resume finished bitwise identical"
