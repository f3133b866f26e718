#!/usr/bin/env bash
# Issue 3's quality benchmark: char-level tinyshakespeare (nanoGPT's 90/10 split) on
# the CPU, three wall-time budgets, best validation loss of each. Evaluations count
# toward the budget. Usage: bench/quality_shakespeare.sh [threads]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BHASA_BIN:-./build/release/bhasa}
data=${BHASA_SHAKESPEARE:-../shared/data/tinyshakespeare.txt}
threads=${1:-2}
for budget in "4 900" "8.3 1900" "15 3400"; do
  set -- $budget
  out=/tmp/bhasa-quality-$1
  rm -rf "$out"
  "$bin" train --data "$data" --out "$out" --preset tiny --max-minutes "$1" --max-steps "$2" \
      --eval-every 100 --threads "$threads" --sample-every-epochs 0 > "$out.log" 2>&1
  python3 - "$out/metrics.jsonl" "$1" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
val = [(r["val_loss"], r["step"], r["time_s"]) for r in rows if "val_loss" in r]
best = min(val)
first_1886 = next((r["time_s"] for r in rows if r.get("val_loss", 9) <= 1.886), None)
print(json.dumps({"budget_min": float(sys.argv[2]), "steps": rows[-1]["step"], "time_s": rows[-1]["time_s"],
                  "best_val_loss": round(best[0], 4), "at_step": best[1], "first_val_le_1.886_at_s": first_1886}))
PY
done
