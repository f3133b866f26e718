// The CUDA backend's factory (plain C++: tests and tools include it without CUDA
// headers). make_backend("cuda") calls make_cuda_backend() with default options.
#pragma once
#include <memory>

#include "kernels/kernels.h"

namespace bhasa {

struct CudaOptions {
  // GEMM math: TF32 tensor cores (fp32 storage, 10-bit mantissa products, fp32
  // accumulation). false: full fp32 GEMMs, for tests that compare with the CPU tightly.
  bool tf32 = true;
  // Products with at most 8 rows (decoding) through the GEMV kernels, not cuBLASLt.
  bool gemv = true;
  // Decode kernels launched with programmatic dependent launch (overlap with the previous kernel).
  bool pdl = true;
};

// Throws Error when no CUDA GPU is usable.
std::unique_ptr<Backend> make_cuda_backend();
std::unique_ptr<Backend> make_cuda_backend(const CudaOptions& options);
// True when a CUDA GPU is present (never throws).
bool cuda_gpu_available();
// The cudaStream_t (as void*) every call of a CUDA backend runs on, for timing with
// CUDA events (bench/cuda_lab). Throws Error for a backend that is not CUDA.
void* cuda_stream_of(Backend& backend);

}  // namespace bhasa
