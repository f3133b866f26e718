// Shared by the decode labs: the time of one call of an op, captured `calls` times in
// one CUDA graph (op(i) picks its i-th copy of the weights, so they come from DRAM)
// and replayed 15 times after a warm-up; CUDA events, median, microseconds per call.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/kernels.h"

inline double time_in_graph(bhasa::Backend& be, int calls, const std::function<void(int)>& op) {
  cudaStream_t s = static_cast<cudaStream_t>(bhasa::cuda_stream_of(be));
  for (int i = 0; i < calls; ++i) op(i);  // warm-up: sizes scratch, picks algorithms
  be.synchronize();
  be.graph_begin_capture();
  for (int i = 0; i < calls; ++i) op(i);
  const int g = be.graph_end_capture();
  be.graph_replay(g);
  be.synchronize();
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<float> ms;
  for (int r = 0; r < 15; ++r) {
    cudaEventRecord(a, s);
    be.graph_replay(g);
    cudaEventRecord(b, s);
    cudaEventSynchronize(b);
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    ms.push_back(t);
  }
  be.graph_destroy(g);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return 1e3 * ms[ms.size() / 2] / calls;
}
