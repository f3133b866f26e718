// The CPU backend: host memory and the float instantiations of the kernels in this
// folder. Also the factory that picks a backend by device name.
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/error.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/kernels.h"

namespace bhasa {

#ifdef BHASA_CUDA
std::unique_ptr<Backend> make_cuda_backend(const std::string& gemm_math);
#endif

namespace {

// 64-byte aligned (a cache line, two AVX2 vectors), zeroed.
void* alloc_zeroed(size_t bytes) {
  const size_t rounded = ((bytes + 63) / 64) * 64;
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  if (!p)
    throw Error("out of host memory allocating " + std::to_string(bytes >> 20) +
                " MiB; use a smaller batch size, sequence length or model");
  std::memset(p, 0, rounded == 0 ? 64 : rounded);
  return p;
}

class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }

  float* alloc(size_t n) override { return static_cast<float*>(alloc_zeroed(n * sizeof(float))); }
  void free(void* p) override { std::free(p); }
  int32_t* alloc_i32(size_t n) override {
    return static_cast<int32_t*>(alloc_zeroed(n * sizeof(int32_t)));
  }
  void upload(float* dst, const float* src, size_t n) override { copy(dst, src, n); }
  void download(float* dst, const float* src, size_t n) override { copy(dst, src, n); }
  void upload_i32(int32_t* dst, const int32_t* src, size_t n) override {
    if (n) std::memcpy(dst, src, n * sizeof(int32_t));
  }
  void zero(float* p, size_t n) override {
    if (n) std::memset(p, 0, n * sizeof(float));
  }
  void copy(float* dst, const float* src, size_t n) override {
    if (n && dst != src) std::memmove(dst, src, n * sizeof(float));
  }

  // Every Operand is fp32 here (operand_dtype() is the default f32).
  void gemm(bool ta, bool tb, int M, int N, int K, ConstOperand A, int lda, ConstOperand B,
            int ldb, float beta, Operand C, int ldc) override {
    cpu::gemm<float>(ta, tb, M, N, K, A.f32(), lda, B.f32(), ldb, beta, C.f32(), ldc);
  }

  void norm_gemm(int M, int N, int K, bool rms, float eps, const float* x, const float* w,
                 const float* b, const float* W, float* out) override {
    cpu::norm_gemm<float>(M, N, K, rms, eps, x, w, b, W, out);
  }
  void ssm_decode_in(int B, int E, int K, int P, const float* x, int ldx, const float* conv_state,
                     const float* conv_w, const float* conv_b, const float* x_proj,
                     float* dbc) override {
    cpu::ssm_decode_in<float>(B, E, K, P, x, ldx, conv_state, conv_w, conv_b, x_proj, dbc);
  }
  void ssm_decode_step(int B, int E, int N, int R, int K, const float* x, const float* z, int ldxz,
                       float* conv_state, const float* conv_w, const float* conv_b,
                       const float* dbc, const float* dt_w, const float* dt_bias,
                       const float* A_log, const float* D, float* h, Operand y) override {
    cpu::ssm_decode_step<float>(B, E, N, R, K, x, z, ldxz, conv_state, conv_w, conv_b, dbc, dt_w,
                                dt_bias, A_log, D, h, y.f32());
  }

  void embedding_forward(int T, int D, const int32_t* ids, const float* table,
                         float* out) override {
    cpu::embedding_forward<float>(T, D, ids, table, out);
  }
  void embedding_backward(int T, int D, int V, const int32_t* ids, const float* dout,
                          float* dtable) override {
    cpu::embedding_backward<float>(T, D, V, ids, dout, dtable);
  }

  void norm_forward(int T, int D, bool rms, float eps, const float* x, const float* w,
                    const float* b, Operand out, float* mean, float* rstd) override {
    cpu::norm_forward<float>(T, D, rms, eps, x, w, b, out.f32(), mean, rstd);
  }
  void norm_backward(int T, int D, bool rms, ConstOperand dout, const float* x, const float* w,
                     const float* mean, const float* rstd, float* dx, float* dw, float* db,
                     Operand dx_copy) override {
    cpu::norm_backward<float>(T, D, rms, dout.f32(), x, w, mean, rstd, dx, dw, db);
    if (dx_copy.p) std::copy(dx, dx + size_t(T) * D, dx_copy.f32());
  }

  void conv1d_silu_forward(int B, int L, int E, int K, ConstOperand x, int ldx, const float* w,
                           const float* bias, Operand out) override {
    cpu::conv1d_silu_forward<float>(B, L, E, K, x.f32(), ldx, w, bias, out.f32());
  }
  void conv1d_silu_backward(int B, int L, int E, int K, ConstOperand x, int ldx,
                            const float* w, const float* bias, ConstOperand dout, Operand dx,
                            float* dw, float* dbias) override {
    cpu::conv1d_silu_backward<float>(B, L, E, K, x.f32(), ldx, w, bias, dout.f32(), dx.f32(), dw, dbias);
  }

  void conv1d_silu_with_state(int B, int L, int E, int K, const float* x, int ldx,
                              const float* w, const float* bias, float* state,
                              float* out) override {
    cpu::conv1d_silu_with_state<float>(B, L, E, K, x, ldx, w, bias, state, out);
  }

  void scan_forward(int B, int L, int E, int N, int chunk, ConstOperand u, ConstOperand dt,
                    const float* dt_bias, const float* A_log, const float* Bm, const float* Cm,
                    int ld_bc, const float* D, ConstOperand z, int ldz, Operand out,
                    float* chunk_states, const float* h0, float* h_last) override {
    cpu::scan_forward<float>(B, L, E, N, chunk, u.f32(), dt.f32(), dt_bias, A_log, Bm, Cm, ld_bc, D, z.f32(), ldz,
                             out.f32(), chunk_states, h0, h_last);
  }
  void scan_backward(int B, int L, int E, int N, int chunk, ConstOperand u, ConstOperand dt,
                     const float* dt_bias, const float* A_log, const float* Bm,
                     const float* Cm, int ld_bc, const float* D, ConstOperand z, int ldz,
                     const float* chunk_states, ConstOperand dout, Operand du, Operand ddt,
                     float* dBm, float* dCm, Operand dz, float* dA_log, float* dD,
                     float* ddt_bias) override {
    cpu::scan_backward<float>(B, L, E, N, chunk, u.f32(), dt.f32(), dt_bias, A_log, Bm, Cm, ld_bc, D, z.f32(), ldz,
                              chunk_states, dout.f32(), du.f32(), ddt.f32(), dBm, dCm, dz.f32(), dA_log, dD, ddt_bias);
  }

  void swiglu_forward(int T, int I, const float* f, float* out) override {
    cpu::swiglu_forward<float>(T, I, f, out);
  }
  void swiglu_backward(int T, int I, const float* f, const float* dout, float* df) override {
    cpu::swiglu_backward<float>(T, I, f, dout, df);
  }

  double cross_entropy(int T, int V, float* logits, int ldl, const int32_t* targets,
                       float dlogits_scale) override {
    return cpu::cross_entropy<float>(T, V, logits, ldl, targets, dlogits_scale);
  }

  void adamw(size_t n, float* p, const float* g, float* m, float* v, float lr, float b1,
             float b2, float eps, float wd, int step, float grad_scale) override {
    cpu::adamw<float>(n, p, g, m, v, lr, b1, b2, eps, wd, step, grad_scale);
  }
  double sum_squares(size_t n, const float* g) override { return cpu::sum_squares<float>(n, g); }
  void axpy(size_t n, float alpha, const float* x, float* y) override {
    cpu::axpy<float>(n, alpha, x, y);
  }
  void dropout_at(size_t n, Operand x, float p, const int32_t* seed) override {
    uint64_t s;
    std::memcpy(&s, seed, sizeof s);
    cpu::dropout<float>(n, x.f32(), p, s);
  }
  void dropout(size_t n, Operand x, float p, uint64_t seed) override {
    cpu::dropout<float>(n, x.f32(), p, seed);
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

// device: "cpu", "cuda", or "cuda:<gemm math>" (fp32, tf32, bf16; see cuda_backend.h).
std::unique_ptr<Backend> make_backend(const std::string& device) {
  if (device == "cpu" || device == "cpu:fp32") return make_cpu_backend();
  if (device.rfind("cpu:", 0) == 0)
    throw Error("the CPU backend computes in fp32 only; drop --precision or use --device cuda");
  if (device == "cuda" || device.rfind("cuda:", 0) == 0) {
#ifdef BHASA_CUDA
    return make_cuda_backend(device == "cuda" ? std::string() : device.substr(5));
#else
    throw Error("this bhasa was built without CUDA; rebuild with the cuda preset "
                "(cmake --preset cuda && cmake --build --preset cuda) or use --device cpu");
#endif
  }
  throw Error("unknown device '" + device + "'; use 'cpu' or 'cuda'");
}

}  // namespace bhasa
