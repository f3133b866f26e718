#!/usr/bin/env bash
# Fuzzes the parsers of untrusted files with libFuzzer (clang, ASan + UBSan):
# safetensors, config.json and tokenizer.json (targets in tests/fuzz/). Each
# target runs for SECONDS (default 60), starting from seeds in tests/data plus a
# few small hand-made ones; the corpus grows in build/fuzz/corpus across runs.
# Prints executions per target; exits non-zero if any target found a crash
# (the input that crashed is kept in build/fuzz/crashes/).
#   scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}

cxx=""
for c in ${FUZZ_CXX:-} clang++ clang++-19 clang++-18 clang++-17 clang++-16 clang++-15 clang++-14; do
  if command -v "$c" >/dev/null 2>&1; then cxx=$c; break; fi
done
[ -n "$cxx" ] || { echo "fuzz: clang++ not found (Debian: apt-get install clang libclang-rt-dev)" >&2; exit 2; }

out=build/fuzz
mkdir -p "$out/obj" "$out/crashes"
flags=(-std=c++20 -O1 -g -fno-omit-frame-pointer -Isrc -fno-sanitize-recover=undefined)

# The library sources each target needs, compiled once with coverage hooks.
declare -A sources=(
  [safetensors]="src/core/files.cpp src/io/safetensors.cpp"
  [config]="src/core/files.cpp src/io/safetensors.cpp src/model/config.cpp src/model/params.cpp src/io/model_dir.cpp"
  [tokenizer]="src/core/files.cpp $(ls src/text/*.cpp | tr '\n' ' ')"
)
all=$(printf '%s\n' ${sources[@]} | sort -u)
pids=()
for src in $all; do
  obj="$out/obj/$(echo "$src" | tr / _).o"
  "$cxx" "${flags[@]}" -fsanitize=fuzzer-no-link,address,undefined -c "$src" -o "$obj" &
  pids+=($!)
  if [ ${#pids[@]} -ge 2 ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p"; done

# Small valid seeds beside the fixtures: libFuzzer mutates short inputs best.
seeds="$out/seeds"
mkdir -p "$seeds/safetensors" "$seeds/config" "$seeds/tokenizer"
header='{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[2,1],"data_offsets":[8,12]},"c":{"dtype":"I64","shape":[1],"data_offsets":[12,20]},"__metadata__":{"format":"pt"}}'
{ printf "\\x$(printf %02x ${#header})\\0\\0\\0\\0\\0\\0\\0"; printf '%s' "$header"; printf '\0\0\x80\x3f\0\0\0\x40\x80\x3f\0\x40\x07\0\0\0\0\0\0\0'; } > "$seeds/safetensors/small.safetensors"
for d in tests/data/*/; do
  [ -f "$d/model.safetensors" ] && cp "$d/model.safetensors" "$seeds/safetensors/$(basename "$d").safetensors"
  [ -f "$d/config.json" ] && cp "$d/config.json" "$seeds/config/$(basename "$d").json"
done
printf '%s' '{"d_model":16,"n_layer":1,"vocab_size":10,"ssm_cfg":{"d_state":4,"layer":"Mamba1"},"d_intermediate":8,"rms_norm":false}' > "$seeds/config/small-ssm.json"
cp tests/data/bpe-shakespeare-512/tokenizer.json "$seeds/tokenizer/bpe.json"
printf '%s' '{"version":"1.0","added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,"model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,"ignore_merges":false,"vocab":{"\n":0," ":1,"a":2,"b":3,"c":4},"merges":[]}}' > "$seeds/tokenizer/char.json"
printf '%s' '{"added_tokens":[{"id":5,"content":"<|endoftext|>","special":true,"lstrip":false,"rstrip":false,"normalized":false,"single_word":false}],"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},"decoder":{"type":"ByteLevel"},"model":{"type":"BPE","vocab":{"a":0,"b":1,"\u0120":2,"ab":3,"\u0120ab":4},"merges":["a b","\u0120 ab"]}}' > "$seeds/tokenizer/bpe-small.json"
printf '\xffab ab aab<|endoftext|>' >> "$seeds/tokenizer/bpe-small.json"

status=0
for target in safetensors config tokenizer; do
  objs=""
  for src in ${sources[$target]}; do objs+=" $out/obj/$(echo "$src" | tr / _).o"; done
  "$cxx" "${flags[@]}" -fsanitize=fuzzer,address,undefined "tests/fuzz/fuzz_$target.cpp" $objs -lpcre2-8 -o "$out/fuzz_$target"
  mkdir -p "$out/corpus/$target"
  log="$out/fuzz_$target.log"
  rc=0
  "$out/fuzz_$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$out/crashes/${target}-" \
    "$out/corpus/$target" "$seeds/$target" > "$log" 2>&1 || rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
  if [ "$rc" -eq 0 ]; then
    echo "fuzz $target: ${execs} executions in ${seconds}s, ${cov:-cov: ?}, no crash"
  else
    echo "fuzz $target: FAILED after ${execs} executions (exit $rc); see $log and $out/crashes/" >&2
    grep -m5 -E 'ERROR|runtime error|SUMMARY|uncaught|Test unit written' "$log" >&2 || tail -20 "$log" >&2
    status=1
  fi
done
exit $status
