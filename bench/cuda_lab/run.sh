#!/usr/bin/env bash
# Builds the CUDA kernel lab against a CUDA build of libbhasa (cmake --preset cuda
# && cmake --build --preset cuda) and runs it: one check and one timing per kernel,
# then a table. BUILD=<build dir> picks another build (default build/cuda).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${BUILD:-$root/build/cuda}
bin=${LAB_BIN:-$build/cuda_lab}
if [[ ! -x $bin || $root/bench/cuda_lab/lab.cpp -nt $bin || $build/libbhasa.a -nt $bin ]]; then
  cuda=${CUDA_HOME:-/usr/local/cuda}
  g++ -O2 -std=c++20 -fopenmp -I"$root/src" -I"$cuda/include" "$root/bench/cuda_lab/lab.cpp" \
    "$build/libbhasa.a" -L"$cuda/lib64" -lcublasLt -lcublas -lcudart -lopenblas -lpcre2-8 -lreadline \
    -o "$bin"
fi
exec "$bin"
