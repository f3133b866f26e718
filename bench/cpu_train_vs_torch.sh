#!/usr/bin/env bash
# Side by side, in one run: bhasa's training step vs the PyTorch reference
# (../shared/tools/ref_mamba.py on Debian's python3-torch), seed preset, batch 4 x 256.
# Usage: bench/cpu_train_vs_torch.sh [threads]   (needs: apt-get install python3-torch)
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
ref=${BHASA_REF_MAMBA:-../shared/tools/ref_mamba.py}
bhasa=$(${BHASA_BIN:-./build/release/bhasa} bench train --preset seed --batch 4 --seq-len 256 --threads "$threads" --steps 3)
echo "$bhasa"
torch=$(/usr/bin/python3 "$ref" bench --preset seed --batch 4 --seq 256 --steps 1 --threads "$threads" | tail -1)
echo "$torch"
python3 - "$bhasa" "$torch" <<'PY'
import json, sys
b, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(json.dumps({"bhasa_tokens_per_s": round(b["tokens_per_s"], 1),
                  "torch_tokens_per_s": t["train_tokens_per_s"],
                  "speedup": round(b["tokens_per_s"] / t["train_tokens_per_s"], 1),
                  "bhasa_gemm_gflops": round(b["achieved_gflops"], 1)}))
PY
