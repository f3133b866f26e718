// Helpers for the CUDA tests: the GPU backend next to the CPU reference, device
// buffers made from host vectors, and the relative error ||out - ref|| / ||ref||.
#pragma once
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/kernels.h"
#include "kernels/sampling.h"
#include "model/mamba.h"

namespace bhasa::test {

// bf16 on the host, as the GPU rounds it. torch: x.to(torch.bfloat16) (round to nearest even;
// finite x), and back to float.
inline uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline float bf16_bits_to_float(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float round_bf16(float f) { return bf16_bits_to_float(float_to_bf16_bits(f)); }
inline std::vector<float> round_bf16(std::vector<float> v) {
  for (float& x : v) x = round_bf16(x);
  return v;
}

// The GPU backend, or null when this machine has no GPU (the test then skips).
inline std::unique_ptr<Backend> gpu_or_null(GemmMath math) {
  if (!cuda_gpu_available()) return nullptr;
  CudaOptions opt;
  opt.gemm = math;
  return make_cuda_backend(opt);
}
inline std::unique_ptr<Backend> gpu_or_null(bool tf32 = true) {
  return gpu_or_null(tf32 ? GemmMath::tf32 : GemmMath::fp32);
}

#define BHASA_REQUIRE_GPU(var, ...)                              \
  auto var = ::bhasa::test::gpu_or_null(__VA_ARGS__);            \
  if (!var) GTEST_SKIP() << "no CUDA GPU on this machine";

// ||out - ref||_2 / ||ref||_2 in double; infinity when out has a NaN or inf.
inline double rel_l2(const std::vector<float>& out, const std::vector<float>& ref) {
  if (out.size() != ref.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i])) return INFINITY;
    const double d = double(out[i]) - ref[i];
    num += d * d;
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

// Sets an environment variable (a kernel's A/B switch) for a scope, then restores it.
struct ScopedEnv {
  std::string name, old;
  bool had;
  ScopedEnv(const char* n, const char* value) : name(n), had(std::getenv(n) != nullptr) {
    if (had) old = std::getenv(n);
    setenv(n, value, 1);
  }
  ~ScopedEnv() {
    if (had) setenv(name.c_str(), old.c_str(), 1);
    else unsetenv(name.c_str());
  }
};

inline std::vector<float> randn(size_t n, std::mt19937& rng, float scale = 1.0f, float mean = 0.0f) {
  std::normal_distribution<float> dist(mean, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// A device buffer holding a copy of a host vector, freed with the backend.
struct DevBuf {
  Backend* be = nullptr;
  float* p = nullptr;
  size_t n = 0;
  DevBuf(Backend& b, const std::vector<float>& host) : be(&b), n(host.size()) {
    p = b.alloc(n);
    b.upload(p, host.data(), n);
  }
  DevBuf(Backend& b, size_t count) : be(&b), n(count) { p = b.alloc(n); }
  ~DevBuf() { be->free(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  std::vector<float> host() const {
    std::vector<float> v(n);
    be->download(v.data(), p, n);
    return v;
  }
};

struct DevIds {
  Backend* be;
  int32_t* p;
  DevIds(Backend& b, const std::vector<int32_t>& host) : be(&b) {
    p = b.alloc_i32(host.size());
    b.upload_i32(p, host.data(), host.size());
  }
  ~DevIds() { be->free(p); }
};

// Raw device copies for the kernel-level tests (cudaMalloc'ed: the caller frees them), and
// bf16 normal draws (bits).
template <typename T>
T* to_device(const std::vector<T>& h) {
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, h.size() * sizeof(T)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  return static_cast<T*>(p);
}
template <typename T>
std::vector<T> to_host(const T* p, size_t n) {
  std::vector<T> h(n);
  EXPECT_EQ(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return h;
}
inline std::vector<uint16_t> randn_bf16(size_t n, std::mt19937& rng, float scale) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = float_to_bf16_bits(d(rng));
  return v;
}

// What generate_tokens must produce from the state s: step() for each token, the sampling
// rule (kernels/sampling.h) on the host; (B, n_new) row-major, as generate_tokens writes them.
inline std::vector<int32_t> reference_tokens(MambaLM& m, DecodeState& s, const std::vector<int32_t>& first,
                                             int n_new, float temperature, uint64_t seed) {
  const int B = s.batch, V = m.config().vocab_size;
  std::vector<int32_t> ids = first, out(size_t(B) * n_new);
  std::vector<float> logits(size_t(B) * V);
  for (int i = 0; i < n_new; i++) {
    m.step(s, ids.data(), logits.data());
    for (int b = 0; b < B; b++) {
      int best = 0;
      float bs = sample_score(logits[size_t(b) * V], temperature, seed, i, b, 0);
      for (int v = 1; v < V; v++) {
        const float sc = sample_score(logits[size_t(b) * V + v], temperature, seed, i, b, v);
        if (sc > bs) bs = sc, best = v;
      }
      ids[b] = best;
      out[size_t(b) * n_new + i] = best;
    }
  }
  return out;
}

}  // namespace bhasa::test
