#!/usr/bin/env bash
# Builds the CUDA kernel lab and the decode benchmark against a CUDA build of
# libbhasa (cmake --preset cuda && cmake --build --preset cuda) and runs them: one
# check and one timing per kernel, then a table; then every GEMM of a training step
# under each GEMM math (gemm_math.cpp); then decode tokens/s; then the training head
# (head.cpp); then the bf16 conv1d at the m130 shape, main's kernels against the
# pipelined ones (conv_bwd.cpp); then the scan backward's variants side by side on the bf16
# training path (scan_bwd.cpp); then the decode GEMMs, cuBLASLt against decode_mma.cu
# (decode_mma.cpp); then the decode head, head_mma.cu alone and with parts taken away
# (head_mma_lab.cu, nvcc). BUILD=<build dir> picks another build (default build/cuda); LAB_BIN /
# DECODE_BIN / GEMM_MATH_BIN / HEAD_BIN / CONV_BIN / SCANB_BIN / MMA_BIN / HEADMMA_BIN run prebuilt
# binaries (e.g. carried to a machine without the dev packages).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${BUILD:-$root/build/cuda}
cuda=${CUDA_HOME:-/usr/local/cuda}
build_one() {  # build_one <source> <binary>
  if [[ ! -x $2 || $1 -nt $2 || $build/libbhasa.a -nt $2 ]]; then
    g++ -O2 -std=c++20 -fopenmp -I"$root/src" -I"$cuda/include" "$1" \
      "$build/libbhasa.a" -L"$cuda/lib64" -lcublasLt -lcublas -lcudart -lopenblas -lpcre2-8 -lreadline \
      $(pkg-config --libs cpp-httplib 2>/dev/null || true) -o "$2"
  fi
}
lab=${LAB_BIN:-$build/cuda_lab}
gemm_math=${GEMM_MATH_BIN:-$build/cuda_gemm_math}
decode=${DECODE_BIN:-$build/cuda_decode}
head=${HEAD_BIN:-$build/cuda_head}
conv=${CONV_BIN:-$build/cuda_conv_bwd}
scanb=${SCANB_BIN:-$build/cuda_scan_bwd}
mma=${MMA_BIN:-$build/cuda_decode_mma}
[[ -n ${LAB_BIN:-} ]] || build_one "$root/bench/cuda_lab/lab.cpp" "$lab"
[[ -n ${GEMM_MATH_BIN:-} ]] || build_one "$root/bench/cuda_lab/gemm_math.cpp" "$gemm_math"
[[ -n ${DECODE_BIN:-} ]] || build_one "$root/bench/cuda_lab/decode.cpp" "$decode"
[[ -n ${HEAD_BIN:-} ]] || build_one "$root/bench/cuda_lab/head.cpp" "$head"
[[ -n ${CONV_BIN:-} ]] || build_one "$root/bench/cuda_lab/conv_bwd.cpp" "$conv"
[[ -n ${SCANB_BIN:-} ]] || build_one "$root/bench/cuda_lab/scan_bwd.cpp" "$scanb"
[[ -n ${MMA_BIN:-} ]] || build_one "$root/bench/cuda_lab/decode_mma.cpp" "$mma"
headmma=${HEADMMA_BIN:-$build/cuda_head_mma}
if [[ -z ${HEADMMA_BIN:-} && ( ! -x $headmma || $root/src/kernels/cuda/head_mma.cu -nt $headmma ||
      $root/bench/cuda_lab/head_mma_lab.cu -nt $headmma ) ]]; then
  objs=()
  for v in 0 1 2 3 6; do  # head_mma.cu as built (0) and with parts taken away (HEAD_MMA_LAB bits)
    names=$([[ $v == 0 ]] || echo "-Dhead_mma=head_mma_lab$v -Dhead_mma_serves=head_mma_serves_lab$v")
    "$cuda/bin/nvcc" -O3 -std=c++20 -arch=sm_90 -I"$root/src" -DHEAD_MMA_LAB=$v $names \
      -c "$root/src/kernels/cuda/head_mma.cu" -o "$build/head_mma_lab$v.o"
    objs+=("$build/head_mma_lab$v.o")
  done
  "$cuda/bin/nvcc" -O3 -std=c++20 -arch=sm_90 -I"$root/src" "$root/bench/cuda_lab/head_mma_lab.cu" "${objs[@]}" \
    "$build/libbhasa.a" -o "$headmma"
fi
"$lab"
"$gemm_math"
"$decode"
"$head"
"$conv"
"$scanb"
"$mma"
"$headmma"
