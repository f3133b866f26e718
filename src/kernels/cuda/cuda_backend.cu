// The CUDA backend: device memory (cudaMalloc), one stream that every kernel, copy
// and GEMM runs on, a cuBLASLt handle with a workspace allocated once, and grow-once
// scratch for the kernels' partial sums. Storage is fp32, except the GEMM-operand
// activations (Operand, kernels.h), which are bf16 when the GEMMs are (GemmMath::bf16);
// in bf16 mode frozen weights also get a bf16 copy for decoding (weight_mirror.cuh),
// so every call that writes memory tells the mirrors (wrote) what it wrote.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/decode_mma.h"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/head_mma.h"
#include "kernels/cuda/op_profile.h"
#include "kernels/cuda/weight_mirror.cuh"

namespace bhasa {

namespace {

using namespace bhasa::cuda;

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const CudaOptions& opt) {
    BHASA_CUDA_CHECK(cudaSetDevice(0));
    BHASA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    BHASA_CUDA_CHECK(cudaMallocHost(&host_result_, 4 * sizeof(double)));
    for (cudaEvent_t& e : events_) BHASA_CUDA_CHECK(cudaEventCreate(&e));
    ctx_.stream = stream_;
    ctx_.scratch = &scratch_;
    ctx_.host_result = host_result_;
    gemm_ = std::make_unique<cuda::Gemm>(stream_, opt.gemm);
    profile_ = std::make_unique<cuda::OpProfile>(stream_);
    gemm_->set_profile(profile_.get());
    gemm_->set_tune(opt.tune_decode);
    gemm_->set_tune_products(opt.tune_decode && opt.tune_large, opt.tune_all);
    mirrors_ = std::make_unique<cuda::WeightMirrors>(stream_);
    bf16_weights_ = opt.bf16_weights && opt.gemm == GemmMath::bf16;
    y_bf16_ = opt.y_bf16;
    train_graphs_ = opt.train_graphs;
    if (const char* n = std::getenv("BHASA_CUDA_W16_MIN_N")) w16_min_n_ = std::atoi(n);
    decode_mma_ = opt.decode_mma;
    decode_mma_max_m_ = opt.decode_mma_max_m;
    if (const char* m = std::getenv("BHASA_DECODE_MMA")) decode_mma_ = std::atoi(m);
    if (const char* m = std::getenv("BHASA_DECODE_MMA_NORM")) decode_mma_norm_ = std::atoi(m) != 0;
    fused_mixer_ = opt.fused_mixer;
    if (const char* m = std::getenv("BHASA_FUSED_MIXER")) fused_mixer_ = std::atoi(m) != 0;
    if (const char* m = std::getenv("BHASA_FUSED_MIXER_MIN_B")) fused_min_b_ = std::max(1, std::atoi(m));
    norm_split_ = opt.norm_split;
    if (const char* m = std::getenv("BHASA_NORM_SPLIT")) norm_split_ = std::atoi(m) != 0;
    xproj_fold_ = opt.xproj_fold;
    if (const char* m = std::getenv("BHASA_XPROJ_FOLD")) xproj_fold_ = std::atoi(m) != 0;
    if (const char* m = std::getenv("BHASA_HEAD_MMA")) head_mma_ = std::atoi(m) != 0;
    if (const char* m = std::getenv("BHASA_HEAD_PICK")) head_pick_ = std::atoi(m) != 0;
    if (const char* m = std::getenv("BHASA_HEAD_LOGITS")) head_logits_ = std::atoi(m) != 0;
    if (const char* m = std::getenv("BHASA_HEAD_TAKEN")) head_taken_ = std::atoi(m) != 0;
    if (const char* m = std::getenv("BHASA_DECODE_MMA_MAX_M")) decode_mma_max_m_ = std::atoi(m);
    if (const char* m = std::getenv("BHASA_DECODE_MMA_THIN_N")) mma_thin_n_ = std::atoi(m);
    if (const char* m = std::getenv("BHASA_DECODE_MMA_LOAD")) mma_tile_.load = std::atoi(m);
    if (const char* m = std::getenv("BHASA_DECODE_MMA_KS")) mma_ks_ = std::atoi(m);
    if (const char* m = std::getenv("BHASA_DECODE_MMA_ROWS")) mma_tile_.rows = std::atoi(m);  // rows a block
    // the fused mixer's products, for A/B timing: "bn,split,wk,load,rows" (0 / -1: the pick's)
    auto tile_env = [](const char* name, cuda::MmaTile& t) {
      if (const char* v = std::getenv(name)) std::sscanf(v, "%d,%d,%d,%d,%d", &t.bn, &t.split, &t.wk, &t.load, &t.rows);
    };
    tile_env("BHASA_MIXER_TILE_IN", mixer_tiles_[0]);
    tile_env("BHASA_MIXER_TILE_X", mixer_tiles_[1]);
    tile_env("BHASA_MIXER_TILE_OUT", mixer_tiles_[2]);
    cudaDeviceProp prop{};
    BHASA_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    ctx_.sm_count = prop.multiProcessorCount;
    ctx_.pdl = opt.pdl;
    gemv_ = opt.gemv;
    head_chunk_ = opt.head_chunk;
    name_ = std::string("cuda (") + prop.name + ", " + gemm_math_name(opt.gemm) + " gemm)";
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    for (cudaGraphExec_t g : graphs_)
      if (g) cudaGraphExecDestroy(g);
    gemm_->set_profile(nullptr);
    profile_.reset();  // prints the op profile, when on
    mirrors_.reset();
    gemm_.reset();
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
    cudaFreeHost(host_result_);
    cudaStreamDestroy(stream_);
  }

  std::string name() const override { return name_; }
  cudaStream_t stream() const { return stream_; }

  // ---- memory -------------------------------------------------------------
  float* alloc(size_t n) override { return static_cast<float*>(alloc_bytes(n * sizeof(float))); }
  int32_t* alloc_i32(size_t n) override {
    return static_cast<int32_t*>(alloc_bytes(n * sizeof(int32_t)));
  }
  void free(void* p) override {
    if (!p) return;
    BHASA_CUDA_CHECK(cudaStreamSynchronize(stream_));
    mirrors_->freed(p);
    if (prepared_.x == p) prepared_ = {};  // (x is the start of an activations buffer)
    BHASA_CUDA_CHECK(cudaFree(p));
  }
  void upload(float* dst, const float* src, size_t n) override {
    wrote(dst, n);
    to_device(dst, src, n * sizeof(float));
  }
  void upload_i32(int32_t* dst, const int32_t* src, size_t n) override {
    mirrors_->wrote(dst, n * sizeof(int32_t));
    to_device(dst, src, n * sizeof(int32_t));
  }
  void download(float* dst, const float* src, size_t n) override {
    if (n == 0) return;
    BHASA_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    BHASA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void zero(float* p, size_t n) override {
    BHASA_PROFILE_OP(*profile_, "zero");
    wrote(p, n);
    if (n) BHASA_CUDA_CHECK(cudaMemsetAsync(p, 0, n * sizeof(float), stream_));
  }
  void copy(float* dst, const float* src, size_t n) override {
    BHASA_PROFILE_OP(*profile_, "copy");
    wrote(dst, n);
    if (n && dst != src)
      BHASA_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, stream_));
  }
  void synchronize() override { BHASA_CUDA_CHECK(cudaStreamSynchronize(stream_)); }
  // bf16 GEMMs round their operands to bf16 anyway: the producers do it once instead.
  Dtype operand_dtype() const override {
    return gemm_->math() == GemmMath::bf16 ? Dtype::bf16 : Dtype::f32;
  }

  // ---- frozen weights: a bf16 copy for the decode GEMMs (bf16 mode) -----------------
  void freeze_weights(const float* params, size_t n) override {
    if (bf16_weights_) mirrors_->freeze(params, n);
  }
  Dtype decode_dtype(int B) const override {
    return y_bf16_ && bf16_weights_ && (B > kGemvMaxM || (fused_mixer_ && B >= fused_min_b_)) && B <= kDecodeMaxM
               ? Dtype::bf16
               : Dtype::f32;
  }

  // ---- kernels --------------------------------------------------------------
  static std::string gemm_name(bool ta, bool tb, int M, int N, int K) {
    return "gemm " + std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K) + (ta ? " T" : " N") +
           (tb ? "T" : "N");
  }
  void gemm(bool ta, bool tb, int M, int N, int K, ConstOperand A, int lda, ConstOperand B,
            int ldb, float beta, Operand Cop, int ldc) override {
    BHASA_PROFILE_OP(*profile_, gemm_name(ta, tb, M, N, K));
    wrote(Cop, M, N, ldc);
    // a bf16 C (a training activation): cuBLASLt writes it from the fp32 accumulators
    if (Cop.dtype == Dtype::bf16)
      return gemm_->run(ta, tb, M, N, K, A, lda, mirrored_b(tb, N, K, B, ldb, A, M), ldb, beta, Cop, ldc);
    float* C = Cop.f32();
    const bool fp32 = A.dtype == Dtype::f32 && B.dtype == Dtype::f32;
    const void* w16 = B.dtype == Dtype::f32 && !ta && tb ? decode_weight(M, N, K, B.f32(), ldb) : nullptr;  // (N, K) bf16, or null
    // A bf16 A (the decode step's y, decode_dtype) with a frozen weight: both bf16 as they are
    if (w16 && A.dtype == Dtype::bf16 && lda == K) return decode_w16(M, N, K, A.p, w16, ldb, beta, C, ldc);
    // A few rows times a row-major weight (x @ W^T): a weight read, cuBLASLt's slow case
    if (gemv_ && fp32 && !ta && tb && gemv_serves(M, N, K, A.f32(), lda, B.f32(), ldb, nullptr, nullptr))
      return cuda::gemv(ctx_, M, N, K, A.f32(), lda, B.f32(), ldb, beta, C, ldc, 0, 0.f, nullptr, nullptr, {},
                        gemv_w16_serves(K, ldb, w16) ? w16 : nullptr);
    if (w16 && fp32 && N >= w16_min_n_) {  // (N, K) bf16 weight: A rounded to bf16 too, for cuBLASLt
      if (!cuda::rows_to_bf16_serves(K, A.f32(), lda))
        return gemm_->run_w16(M, N, K, A.f32(), lda, nullptr, w16, ldb, beta, C, ldc);
      void* a16 = scratch_.get(kDecodeA16, size_t(M) * K * 2);  // (M, K) bf16
      cuda::rows_to_bf16(ctx_, M, K, A.f32(), lda, a16);
      return decode_w16(M, N, K, a16, w16, ldb, beta, C, ldc);
    }
    gemm_->run(ta, tb, M, N, K, A, lda, mirrored_b(tb, N, K, B, ldb, A, M), ldb, beta, C, ldc);
  }

  // cuBLASLt reads R as its C and writes C as its D: no copy of the residual. Decode's
  // small products (their own paths above) add in place or copy first.
  void gemm_residual(bool ta, bool tb, int M, int N, int K, ConstOperand A, int lda, ConstOperand B, int ldb,
                     const float* R, float* C, int ldc) override {
    if (R == C || M <= 64 || K == 0) return Backend::gemm_residual(ta, tb, M, N, K, A, lda, B, ldb, R, C, ldc);
    BHASA_PROFILE_OP(*profile_, gemm_name(ta, tb, M, N, K) + " +R");
    wrote(C, M, N, ldc);
    gemm_->run(ta, tb, M, N, K, A, lda, mirrored_b(tb, N, K, B, ldb, A, M), ldb, 1.0f, C, ldc, R);
  }

  // dY is A in both products (slot 0 of the bf16 copies): pinned, it is converted once.
  void linear_backward(int T, int O, int I, ConstOperand dY, int ldy, const float* W, int ldw,
                       ConstOperand X, int ldx, float beta_dx, Operand dX, int lddx, float* dW) override {
    BHASA_PROFILE_OP(*profile_, "linear_backward " + std::to_string(T) + "x" + std::to_string(O) + "x" + std::to_string(I));
    wrote(dX, T, I, lddx), wrote(dW, O, I, ldw);
    gemm_->pin(dY.p);
    try {
      gemm_->run(false, false, T, I, O, dY, ldy, mirrored(W, O, I, ldw, dY, T, I), ldw, beta_dx, dX, lddx);
      gemm_->run(true, false, O, I, T, dY, ldy, X, ldx, 1.0f, dW, ldw);
    } catch (...) {
      gemm_->unpin();
      throw;
    }
    gemm_->unpin();
  }

  // ---- one decode step ------------------------------------------------------
  void norm_gemm(int M, int N, int K, bool rms, float eps, const float* x, const float* w,
                 const float* b, const float* W, float* out) override {
    BHASA_PROFILE_OP(*profile_, "norm_gemm " + std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K));
    wrote(out, M, N, N);
    const void* w16 = decode_weight(M, N, K, W, K);  // (N, K) bf16, or null
    if (gemv_ && gemv_serves(M, N, K, x, K, W, K, w, b))
      return cuda::gemv(ctx_, M, N, K, x, K, W, K, 0.f, out, N, rms ? 1 : 2, eps, w, b, {},
                        gemv_w16_serves(K, K, w16) ? w16 : nullptr);
    if (head_on_mma(M, N, K, rms, eps, x, w, b, w16, out, nullptr)) return;
    // RMSNorm folded into our GEMM (BHASA_DECODE_MMA_NORM=0: a norm kernel first, as below)
    if (w16 && N >= w16_min_n_ && rms && decode_mma_norm_ && use_mma(M, N) &&
        cuda::decode_mma_norm_serves(M, N, K, x, K, w, w16, K))
      return cuda::decode_mma_norm(stream_, ctx_.pdl, M, N, K, x, K, w, eps, w16, K, out, N, mma_tile(K));
    auto* h = static_cast<float*>(scratch_.get(kDecodeA, size_t(M) * K * sizeof(float)));
    if (w16 && N >= w16_min_n_ && cuda::norm_rows_serves(K, x, w, b, h)) {  // h (M, K) bf16
      cuda::norm_rows_bf16(ctx_, M, K, rms, eps, x, w, b, h);
      return decode_w16(M, N, K, h, w16, K, 0.f, out, N);
    }
    if (cuda::norm_rows_serves(K, x, w, b, h)) {
      cuda::norm_rows(ctx_, M, K, rms, eps, x, w, b, h);
    } else {
      auto* stats = static_cast<float*>(scratch_.get(kDecodeStats, 2 * size_t(M) * sizeof(float)));
      cuda::norm_forward(ctx_, M, K, rms, eps, x, w, b, h, stats, stats + M);
    }
    if (w16 && N >= w16_min_n_) return gemm_->run_w16(M, N, K, h, K, nullptr, w16, K, 0.f, out, N);
    gemm_->run(false, true, M, N, K, h, K, W, K, 0.f, out, N);
  }
  // The tied head of a batch decode step, its norm prepared by the last layer's out_proj
  // (mixer_decode_step with the final norm as next_norm_w): head_mma, launched with PDL, and
  // with pick the greedy ids too. False, launching nothing, where it does not serve.
  // m130, B = 64, in the decode chain: cuBLASLt 30.0 us, head_mma 28.8-29.4 (NOTES.md, session 11).
  bool head_on_mma(int M, int N, int K, bool rms, float eps, const float* x, const float* w, const float* b,
                   const void* w16, float* out, const cuda::HeadPick* pick) {
    if (!w16 || !rms || b || !head_mma_ || prepared_.x != x || prepared_.g != w || prepared_.B != M) return false;
    const void* a16 = scratch_.get(kDecodeNext16, size_t(M) * K * 2);  // (as mixer_decode_step's)
    if (!cuda::head_mma_serves(M, N, K, a16, w16, K, out, N)) return false;
    const auto* ss = static_cast<const float*>(scratch_.get(kDecodeNextSS, size_t(M) * K * sizeof(float)));
    cuda::head_mma(stream_, ctx_.pdl, ctx_.sm_count, M, N, K, a16, ss, prepared_.tiles, M, eps, w16, K, out, N,
                   pick);
    return true;
  }
  // Greedy: the ids picked by head_mma itself (its blocks' bests merged by its last block), in
  // place of sample_tokens' pass over the logits, and the logits not stored (B = 64: 0.471 ->
  // 0.468 ms a step, session 12).
  // m130, ms a step (one call, session 11): cuBLASLt head + sample_tokens -> head_mma +
  // sample_tokens -> this: B = 16 0.328 -> 0.324 -> 0.323, B = 32 0.372 -> 0.371 -> 0.366,
  // B = 64 0.473 -> 0.472 -> 0.470.
  void head_sample(int B, int V, int D, bool rms, float eps, const float* x, const float* norm_w,
                   const float* norm_b, const float* W, float* logits, float temperature, uint64_t seed,
                   int32_t* counter, int32_t* ids, int32_t* history, int capacity) override {
    if (temperature <= 0.0f && head_pick_) {
      BHASA_PROFILE_OP(*profile_, "head_sample");
      cuda::HeadPick pick;
      pick.counter = counter, pick.ids = ids, pick.history = history, pick.capacity = capacity;
      pick.logits = head_logits_;  // (the caller wants the ids)
      pick.keys = static_cast<unsigned long long*>(scratch_.get(kHeadPickKeys, size_t(B) * 8, /*zeroed=*/true));
      pick.done = static_cast<unsigned*>(scratch_.get(kHeadPickDone, 2 * sizeof(unsigned), /*zeroed=*/true));
      if (head_taken_) pick.next_tile = pick.done + 1;
      wrote(logits, size_t(B) * V);
      if (head_on_mma(B, V, D, rms, eps, x, norm_w, norm_b, decode_weight(B, V, D, W, D), logits, &pick)) return;
    }
    Backend::head_sample(B, V, D, rms, eps, x, norm_w, norm_b, W, logits, temperature, seed, counter, ids, history,
                         capacity);
  }
  void ssm_decode_in(int B, int E, int K, int P, const float* x, int ldx, const float* conv_state,
                     const float* conv_w, const float* conv_b, const float* x_proj,
                     float* dbc) override {
    BHASA_PROFILE_OP(*profile_, "ssm_decode_in");
    wrote(dbc, B, P, P);
    if (gemv_ && cuda::conv_gemv_serves(B, E, K, P, x, ldx, conv_state, x_proj)) {
      cuda::ConvIn cv;
      cv.state = conv_state, cv.w = conv_w, cv.b = conv_b, cv.K = K;
      const void* w16 = decode_weight(B, P, E, x_proj, E);
      return cuda::gemv(ctx_, B, P, E, x, ldx, x_proj, E, 0.f, dbc, P, 0, 0.f, nullptr, nullptr, cv,
                        gemv_w16_serves(E, E, w16) ? w16 : nullptr);
    }
    // x_proj's weight frozen: u straight to bf16 for cuBLASLt (4.1 us at B = 64 against
    // 5.3 for TF32 on fp32 u; a separate rounding pass would cost that gain back)
    const void* w16 = decode_weight(B, P, E, x_proj, E);
    if (w16 && cuda::conv_rows_serves(E, K, x, ldx, conv_state)) {
      cuda::ConvIn cv;
      cv.state = conv_state, cv.w = conv_w, cv.b = conv_b, cv.K = K;
      void* u16 = scratch_.get(kDecodeA16, size_t(B) * E * 2);  // (B, E) bf16
      cuda::conv_rows_bf16(ctx_, B, E, x, ldx, cv, u16);
      return decode_w16(B, P, E, u16, w16, E, 0.f, dbc, P);
    }
    auto* xs = static_cast<float*>(scratch_.get(kDecodeA, size_t(B) * E * sizeof(float)));
    cuda::conv_decode(ctx_, B, E, K, x, ldx, conv_state, conv_w, conv_b, xs);
    gemm(false, true, B, P, E, xs, E, x_proj, E, 0.f, dbc, P);
  }
  void ssm_decode_step(int B, int E, int N, int R, int K, const float* x, const float* z, int ldxz,
                       float* conv_state, const float* conv_w, const float* conv_b,
                       const float* dbc, const float* dt_w, const float* dt_bias,
                       const float* A_log, const float* D, float* h, Operand y) override {
    BHASA_PROFILE_OP(*profile_, "ssm_decode_step");
    wrote(conv_state, size_t(B) * (K - 1) * E), wrote(h, size_t(B) * E * N), wrote(y, size_t(B) * E);
    cuda::ssm_decode_step(ctx_, B, E, N, R, K, x, z, ldxz, conv_state, conv_w, conv_b, dbc, dt_w,
                          dt_bias, A_log, D, h, y);
  }
  // The mixer in 3 kernels, all our own and launched with PDL, at 2 <= B <= 64 with bf16
  // weights (unfused: norm_rows, in_proj, conv_rows, x_proj, the scan step, out_proj, with
  // cuBLASLt for the two wide products above 32 rows):
  //   in_proj with the norm, the causal conv and x_proj folded in (decode_mma_prenorm_conv /
  //     decode_mma_norm_conv: the conv state read before pdl_wait; x_proj as one partial a
  //     column tile, XProjFold), or x_proj as a fourth kernel on u's bf16 copy;
  //   the scan step on u, summing x_proj's partials (ssm_step_rows_u);
  //   out_proj on decode_mma, which also prepares the next norm when there is one
  //     (decode_mma_next_norm: the next in_proj then reads a plain bf16 A); the embedding
  //     prepares the first (embedding_decode).
  // H200, m130 decode, ms a step, unfused -> 4 kernels -> the norm prepared -> x_proj folded:
  // B 16 0.412 -> 0.389 -> 0.378 -> 0.355, 32 0.473 -> 0.444 -> 0.423 -> 0.398, 48 0.582 ->
  // 0.534 -> 0.486 -> 0.458, 64 0.608 -> 0.586 -> 0.531 -> 0.493. decode_mma_max_m does not
  // apply here (its default 32 is for the unfused ops). Session 17, from B = 2 (was 16; the
  // products on wgmma, the scan step's rows kernel from B = 2 too): B = 2 0.321 -> 0.257, 4 0.479
  // -> 0.267, 8 0.843 -> 0.274, 12 0.41 -> 0.285; B = 1 0.240 -> 0.251, so not there.
  bool mixer_decode_step(const MixerStep& m) override {
    const int P = m.R + 2 * m.N;
    if (!fused_mixer_ || decode_mma_ == 0 || !m.rms || m.norm_b || m.B < fused_min_b_ || m.B > kDecodeMaxM) return false;
    const void* in16 = decode_weight(m.B, 2 * m.E, m.D, m.in_proj, m.D);
    const void* x16 = decode_weight(m.B, P, m.E, m.x_proj, m.E);
    const void* out16 = decode_weight(m.B, m.D, m.E, m.out_proj, m.E);
    if (!in16 || !x16 || !out16 || m.y.dtype != Dtype::bf16) return false;
    cuda::MmaTile tiles[3];  // in_proj, x_proj, out_proj
    mixer_tiles(m.B, tiles);
    // this x's norm prepared by the previous step's out_proj, and whether this one prepares
    // the next (the scratch operands are cudaMalloc'ed, aligned: the weights stand in for them
    // in the checks, so that declining allocates nothing)
    const bool pre = prepared_.x == m.x && prepared_.g == m.norm_w && prepared_.B == m.B;
    const bool next = norm_split_ && m.next_norm_w &&
                      cuda::decode_mma_next_norm_serves(m.B, m.D, m.E, out16, out16, m.E, m.x, m.D, m.next_norm_w,
                                                        tiles[2]);
    if (!(pre ? cuda::decode_mma_prenorm_conv_serves(m.B, m.E, m.D, in16, in16, m.D, m.xz, 2 * m.E, m.K, m.conv_w,
                                                     m.conv_b, m.conv_state, tiles[0])
              : cuda::decode_mma_norm_conv_serves(m.B, m.E, m.D, m.x, m.D, m.norm_w, in16, m.D, m.xz, 2 * m.E, m.K,
                                                  m.conv_w, m.conv_b, m.conv_state, tiles[0])) ||
        !cuda::decode_mma_serves(m.B, P, m.E, x16, x16, m.E, tiles[1]) ||
        !cuda::decode_mma_serves(m.B, m.D, m.E, m.y.p, out16, m.E, tiles[2]) ||
        !cuda::ssm_step_rows_u_serves(m.B, m.E, m.N, m.R, 1, 2 * m.E, m.dbc, m.dt_proj_w, m.A_log, m.h_state))
      return false;
    // x_proj folded into in_proj: its partials, one a column tile left of E
    const int xtiles = xproj_fold_ ? cuda::decode_mma_xproj_tiles(m.B, m.E, m.D, P, tiles[0]) : 0;
    void* u16 = xtiles > 0 ? nullptr : scratch_.get(kDecodeA16, size_t(m.B) * m.E * 2);  // (B, E) bf16: x_proj's A
    void* next16 = scratch_.get(kDecodeNext16, size_t(m.B) * m.D * 2);               // (B, D) bf16
    auto* next_ss = static_cast<float*>(scratch_.get(kDecodeNextSS, size_t(m.B) * m.D * sizeof(float)));  // (tiles, B)
    cuda::XProjFold xp;
    if (xtiles > 0)
      xp = {x16, P, static_cast<float*>(scratch_.get(kDecodeXPart, size_t(xtiles) * m.B * P * sizeof(float)))};  // (xtiles, B, P)
    BHASA_PROFILE_OP(*profile_, "mixer_decode_step");
    const PreparedNorm in = prepared_;
    // The kernels below load this layer's states before their waits, taking the last writer
    // to have ended: true where each step starts with embedding_decode (its kernel is the cut,
    // embedding_prenorm_kernel). A layer stepped again since then (callers other than the
    // model's decode) has its in_proj launched without PDL, after everything before it: a cut
    // too, so the list starts again there (which also bounds it).
    const bool again = std::find(stepped_.begin(), stepped_.end(), m.conv_state) != stepped_.end() ||
                       stepped_.size() >= 1024;
    if (again) stepped_.clear();
    stepped_.push_back(m.conv_state);
    const bool pdl = ctx_.pdl && !again;
    wrote(m.xz, size_t(m.B) * 2 * m.E), wrote(m.dbc, size_t(m.B) * P);
    wrote(m.conv_state, size_t(m.B) * (m.K - 1) * m.E), wrote(m.h_state, size_t(m.B) * m.E * m.N);
    wrote(m.y, size_t(m.B) * m.E), wrote(m.x, size_t(m.B) * m.D);
    if (pre)
      cuda::decode_mma_prenorm_conv(stream_, pdl, m.B, m.E, m.D, next16, next_ss, in.tiles, m.eps, in16, m.D,
                                    m.xz, 2 * m.E, m.conv_w, m.conv_b, m.conv_state, u16, tiles[0], &xp);
    else
      cuda::decode_mma_norm_conv(stream_, pdl, m.B, m.E, m.D, m.x, m.D, m.norm_w, m.eps, in16, m.D, m.xz,
                                 2 * m.E, m.conv_w, m.conv_b, m.conv_state, u16, tiles[0], &xp);
    if (xtiles == 0) cuda::decode_mma(stream_, ctx_.pdl, m.B, P, m.E, u16, x16, m.E, 0.f, m.dbc, P, tiles[1]);
    cuda::ssm_step_rows_u(ctx_, m.B, m.E, m.N, m.R, m.xz, m.xz + m.E, 2 * m.E, xtiles > 0 ? xp.part : m.dbc,
                          m.dt_proj_w, m.dt_proj_b, m.A_log, m.D_skip, m.h_state, m.y, std::max(xtiles, 1));
    BHASA_LAUNCH_CHECK("mixer_decode_step");
    if (next) {
      const int ss_tiles = cuda::decode_mma_next_norm(stream_, ctx_.pdl, m.B, m.D, m.E, m.y.p, out16, m.E, m.x, m.D,
                                                      m.next_norm_w, next16, next_ss, tiles[2]);
      prepared_ = {m.x, m.next_norm_w, m.B, ss_tiles, size_t(m.B) * m.D * sizeof(float)};
    } else {
      cuda::decode_mma(stream_, ctx_.pdl, m.B, m.D, m.E, m.y.p, out16, m.E, 1.f, m.x, m.D, tiles[2]);
    }
    return true;
  }
  // With the first mixer's norm prepared (embedding_prenorm), where mixer_decode_step would
  // read it: layer 0's in_proj then stages a plain bf16 A as the others do.
  bool embedding_decode(int B, int D, const int32_t* ids, const float* table, float* out,
                        const float* norm_w) override {
    if (!norm_w || !fused_mixer_ || !norm_split_ || decode_mma_ == 0 || !bf16_weights_ || B < fused_min_b_ || B > kDecodeMaxM)
      return false;
    void* next16 = scratch_.get(kDecodeNext16, size_t(B) * D * 2);  // (as mixer_decode_step's)
    auto* next_ss = static_cast<float*>(scratch_.get(kDecodeNextSS, size_t(B) * D * sizeof(float)));
    BHASA_PROFILE_OP(*profile_, "embedding_decode");
    if (!cuda::embedding_prenorm(ctx_, B, D, ids, table, norm_w, out, next16, next_ss)) return false;
    wrote(out, size_t(B) * D);
    prepared_ = {out, norm_w, B, 1, size_t(B) * D * sizeof(float)};
    stepped_.clear();
    return true;
  }
  void embedding_forward(int T, int D, const int32_t* ids, const float* table, float* out) override {
    BHASA_PROFILE_OP(*profile_, "embedding_forward");
    stepped_.clear();  // (a plain launch: it starts after everything before it has ended)
    wrote(out, size_t(T) * D);
    cuda::embedding_forward(ctx_, T, D, ids, table, out);
  }
  void embedding_backward(int T, int D, int V, const int32_t* ids, const float* dout,
                          float* dtable) override {
    BHASA_PROFILE_OP(*profile_, "embedding_backward");
    wrote(dtable, size_t(V) * D);
    cuda::embedding_backward(ctx_, T, D, V, ids, dout, dtable);
  }
  void norm_forward(int T, int D, bool rms, float eps, const float* x, const float* w,
                    const float* b, Operand out, float* mean, float* rstd) override {
    BHASA_PROFILE_OP(*profile_, "norm_forward");
    wrote(out, size_t(T) * D), wrote(mean, T), wrote(rstd, T);
    cuda::norm_forward(ctx_, T, D, rms, eps, x, w, b, out, mean, rstd);
  }
  void norm_backward(int T, int D, bool rms, ConstOperand dout, const float* x, const float* w,
                     const float* mean, const float* rstd, float* dx, float* dw, float* db,
                     Operand dx_copy) override {
    BHASA_PROFILE_OP(*profile_, "norm_backward");
    wrote(dx, size_t(T) * D), wrote(dw, D), wrote(db, D), wrote(dx_copy, size_t(T) * D);
    cuda::norm_backward(ctx_, T, D, rms, dout, x, w, mean, rstd, dx, dw, db, dx_copy);
  }
  void conv1d_silu_forward(int B, int L, int E, int K, ConstOperand x, int ldx, const float* w,
                           const float* bias, Operand out) override {
    BHASA_PROFILE_OP(*profile_, "conv1d_silu_forward");
    wrote(out, size_t(B) * L * E);
    cuda::conv1d_silu_forward(ctx_, B, L, E, K, x, ldx, w, bias, out);
  }
  void conv1d_silu_backward(int B, int L, int E, int K, ConstOperand x, int ldx, const float* w,
                            const float* bias, ConstOperand dout, Operand dx, float* dw,
                            float* dbias) override {
    BHASA_PROFILE_OP(*profile_, "conv1d_silu_backward");
    wrote(dx, B * L, E, ldx), wrote(dw, size_t(E) * K), wrote(dbias, E);
    cuda::conv1d_silu_backward(ctx_, B, L, E, K, x, ldx, w, bias, dout, dx, dw, dbias);
  }
  void conv1d_silu_with_state(int B, int L, int E, int K, const float* x, int ldx, const float* w,
                              const float* bias, float* state, float* out) override {
    BHASA_PROFILE_OP(*profile_, "conv1d_silu_with_state");
    wrote(state, size_t(B) * (K - 1) * E), wrote(out, size_t(B) * L * E);
    cuda::conv1d_silu_with_state(ctx_, B, L, E, K, x, ldx, w, bias, state, out);
  }
  // Chunk 8: the backward needs no replay pass; at m130 16 x 2048 the scan takes 2.85 ms
  // forward + backward against 3.17 ms at chunk 64, for 9.7 GB more saved states
  // (bench/cuda_lab/NOTES.md).
  int scan_chunk() const override { return 8; }
  void scan_forward(int B, int L, int E, int N, int chunk, ConstOperand u, ConstOperand dt,
                    const float* dt_bias, const float* A_log, const float* Bm, const float* Cm,
                    int ld_bc, const float* D, ConstOperand z, int ldz, Operand out,
                    float* chunk_states, const float* h0, float* h_last) override {
    BHASA_PROFILE_OP(*profile_, "scan_forward");
    wrote(out, size_t(B) * L * E), wrote(h_last, size_t(B) * E * N);
    if (chunk_states) wrote(chunk_states, size_t(B) * ((L + chunk - 1) / chunk) * E * N);
    cuda::scan_forward(ctx_, B, L, E, N, chunk, u, dt, dt_bias, A_log, Bm, Cm, ld_bc, D, z, ldz, out,
                       chunk_states, h0, h_last);
  }
  void scan_backward(int B, int L, int E, int N, int chunk, ConstOperand u, ConstOperand dt,
                     const float* dt_bias, const float* A_log, const float* Bm, const float* Cm,
                     int ld_bc, const float* D, ConstOperand z, int ldz, const float* chunk_states,
                     ConstOperand dout, Operand du, Operand ddt, float* dBm, float* dCm, Operand dz,
                     float* dA_log, float* dD, float* ddt_bias) override {
    BHASA_PROFILE_OP(*profile_, "scan_backward");
    wrote(du, size_t(B) * L * E), wrote(ddt, size_t(B) * L * E), wrote(dBm, B * L, N, ld_bc);
    wrote(dCm, B * L, N, ld_bc), wrote(dz, B * L, E, ldz), wrote(dA_log, size_t(E) * N);
    wrote(dD, E), wrote(ddt_bias, E);
    cuda::scan_backward(ctx_, B, L, E, N, chunk, u, dt, dt_bias, A_log, Bm, Cm, ld_bc, D, z, ldz,
                        chunk_states, dout, du, ddt, dBm, dCm, dz, dA_log, dD, ddt_bias);
  }
  void swiglu_forward(int T, int I, const float* f, float* out) override {
    BHASA_PROFILE_OP(*profile_, "swiglu_forward");
    wrote(out, size_t(T) * I);
    cuda::swiglu_forward(ctx_, T, I, f, out);
  }
  void swiglu_backward(int T, int I, const float* f, const float* dout, float* df) override {
    BHASA_PROFILE_OP(*profile_, "swiglu_backward");
    wrote(df, size_t(T) * 2 * I);
    cuda::swiglu_backward(ctx_, T, I, f, dout, df);
  }
  double cross_entropy(int T, int V, float* logits, int ldl, const int32_t* targets,
                       float dlogits_scale) override {
    BHASA_PROFILE_OP(*profile_, "cross_entropy");
    if (dlogits_scale != 0.0f) wrote(logits, T, V, ldl);
    return cuda::cross_entropy(ctx_, T, V, logits, ldl, targets, dlogits_scale);
  }
  double head_loss(int T, int V, int D, ConstOperand X, const float* W, const int32_t* targets,
                   float dlogits_scale, Operand dX, float* dW) override {
    BHASA_PROFILE_OP(*profile_, "head_loss " + std::to_string(T) + "x" + std::to_string(V) + "x" + std::to_string(D));
    const void* W16 = bf16_weights_ ? mirrors_->find(W, size_t(V) * D) : nullptr;
    return cuda::head_loss(ctx_, *gemm_, head_chunk_, T, V, D, X, W, W16, targets, dlogits_scale, dX, dW);
  }
  void adamw(size_t n, float* p, const float* g, float* m, float* v, float lr, float b1, float b2,
             float eps, float wd, int step, float grad_scale) override {
    BHASA_PROFILE_OP(*profile_, "adamw");
    // The weights' bf16 mirror rewritten in the same pass (BHASA_ADAMW_V=old: dropped here
    // and converted again by the next freeze_weights, a separate pass).
    const char* e = std::getenv("BHASA_ADAMW_V");  // read at each call: a lab switches between calls
    const bool fuse = !(e && std::string(e) == "old");
    void* p16 = fuse && bf16_weights_ ? mirrors_->rewriting(p, n) : nullptr;
    if (!p16) wrote(p, n);
    wrote(m, n), wrote(v, n);
    cuda::adamw(ctx_, n, p, g, m, v, lr, b1, b2, eps, wd, step, grad_scale, p16);
  }
  double sum_squares(size_t n, const float* g) override { return cuda::sum_squares(ctx_, n, g); }
  void axpy(size_t n, float alpha, const float* x, float* y) override {
    BHASA_PROFILE_OP(*profile_, "axpy");
    wrote(y, n);
    cuda::axpy(ctx_, n, alpha, x, y);
  }
  void dropout(size_t n, Operand x, float p, uint64_t seed) override {
    BHASA_PROFILE_OP(*profile_, "dropout");
    wrote(x, n);
    cuda::dropout(ctx_, n, x, p, seed);
  }
  void dropout_at(size_t n, Operand x, float p, const int32_t* seed) override {
    BHASA_PROFILE_OP(*profile_, "dropout");
    wrote(x, n);
    cuda::dropout(ctx_, n, x, p, seed);
  }

  // ---- decoding -------------------------------------------------------------
  void sample_tokens(int B, int V, const float* logits, float temperature, uint64_t seed,
                     int32_t* counter, int32_t* ids, int32_t* history, int capacity) override {
    BHASA_PROFILE_OP(*profile_, "sample_tokens");
    cuda::sample_tokens(ctx_, B, V, logits, temperature, seed, counter, ids, history, capacity);
  }
  void download_i32(int32_t* dst, const int32_t* src, size_t n) override {
    if (n == 0) return;
    BHASA_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
    BHASA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  bool supports_graphs() const override { return true; }
  // The op profile's events cannot be captured.
  bool graphs_for_training() const override { return train_graphs_ && !profile_->enabled(); }
  // Thread-local capture: only this thread's calls on our stream are recorded; any
  // call that would synchronise (upload, download, alloc) fails the capture loudly.
  void graph_begin_capture() override {
    BHASA_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  }
  int graph_end_capture() override {
    cudaGraph_t graph = nullptr;
    BHASA_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
    cudaGraphExec_t exec = nullptr;
    BHASA_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    BHASA_CUDA_CHECK(cudaGraphDestroy(graph));
    graphs_.push_back(exec);
    graph_scratch_.push_back(scratch_.generation());
    return int(graphs_.size()) - 1;
  }
  // A graph holds the scratch addresses of its capture: stale once a scratch buffer moved.
  bool graph_current(int graph) const override {
    return graph >= 0 && graph < int(graphs_.size()) && graphs_[graph] && graph_scratch_[graph] == scratch_.generation();
  }
  void graph_replay(int graph) override {
    check(graph >= 0 && graph < int(graphs_.size()) && graphs_[graph], "graph_replay: no such graph");
    BHASA_CUDA_CHECK(cudaGraphLaunch(graphs_[graph], stream_));
  }
  void graph_destroy(int graph) override {
    if (graph < 0 || graph >= int(graphs_.size()) || !graphs_[graph]) return;
    BHASA_CUDA_CHECK(cudaStreamSynchronize(stream_));
    BHASA_CUDA_CHECK(cudaGraphExecDestroy(graphs_[graph]));
    graphs_[graph] = nullptr;
  }

  // ---- timing: CUDA events on the stream --------------------------------------
  void mark(int slot) override {
    check_slot(slot);
    BHASA_CUDA_CHECK(cudaEventRecord(events_[slot], stream_));
  }
  double seconds(int from, int to) override {
    check_slot(from), check_slot(to);
    BHASA_CUDA_CHECK(cudaEventSynchronize(events_[to]));
    float ms = 0;
    BHASA_CUDA_CHECK(cudaEventElapsedTime(&ms, events_[from], events_[to]));
    return ms / 1e3;
  }

 private:
  void* alloc_bytes(size_t bytes) {
    void* p = nullptr;
    const size_t b = bytes == 0 ? 16 : bytes;
    if (cudaMalloc(&p, b) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky-free allocation error
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      throw Error("out of GPU memory allocating " + std::to_string(bytes >> 20) + " MiB (" +
                  std::to_string(free_b >> 20) + " MiB free of " + std::to_string(total_b >> 20) +
                  "); use a smaller batch size, sequence length or model");
    }
    note_write(p, b);  // new memory where a freed, mirrored range (or a prepared x) was
    BHASA_CUDA_CHECK(cudaMemsetAsync(p, 0, b, stream_));
    BHASA_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return p;
  }
  // The fused mixer's tiles at batch B (decode_mma_pick's but where the whole step measured
  // faster; H200, m130, ms a step, with one change each: B = 32 in_proj in 3 K slices, all
  // rows a block 0.433 -> 0.427; B = 64 x_proj in 4 K slices 0.561 -> 0.540, out_proj's 64
  // rows a block 0.555; both: 0.557 -> 0.535; with the split-K partials pushed, out_proj in
  // 64 columns x 8 K slices, all rows a block, at B > 16: B = 24 0.356 -> 0.340, 32 0.386 ->
  // 0.382, 48 0.459 -> 0.443, 64 0.478 -> 0.471, where the 32 x 4 tile read all of y's slice
  // in 24 blocks where now 12 do, half of it each; B = 16 0.326 -> 0.329, not taken;
  // session 14, in_proj in 128 columns, one warp along K: fewer blocks, so that they are all
  // on the SMs, weights copied, when out_proj ends, and 12 x_proj partials for the scan step
  // to sum, not 24; B = 64 with 2 K slices, 32 rows a block (96 blocks) and out_proj in 4 K
  // slices (48 blocks) 0.467 -> 0.443, either alone 0.463 / 0.472; B = 48 in 4 K slices, all
  // rows (96 blocks) 0.411 -> 0.397; B = 16 the same 0.318 -> 0.313; B = 24 / 32 no better:
  // 0.333 / 0.364 at best; B = 32 out_proj in 6 K slices 0.365 -> 0.358-0.359; session 17,
  // the products on wgmma, out_proj again (B = 16 was the pick's 32 columns, on mma.sync):
  // B = 16 0.303 -> 0.293 in 8 K slices, 24 0.311 -> 0.303-0.304 in 6, 32 0.337 -> 0.331 in
  // 8; B = 48 / 64 stand; then with the wgmmas no longer serialised (C7520): B = 16 in_proj
  // as B = 17-32's 0.298 -> 0.278, B = 32 out_proj in 4 K slices 0.340 -> 0.327, B = 8 all
  // alike within 0.001 (taken from B = 9)), then the BHASA_MIXER_TILE_* overrides.
  void mixer_tiles(int B, cuda::MmaTile (&t)[3]) const {
    using T = cuda::MmaTile;
    t[0] = B > 48   ? T{128, 2, 1, 3, 32}
           : B > 32 ? T{128, 4, 1, 3, 64}
           : B > 8  ? T{64, 3, 2, 3, 32}
                    : T{128, 4, 1, 3, 32};
    t[1] = B > 32 ? T{16, 4, 4, 3, 16} : T{};
    t[2] = B > 48   ? T{64, 4, 2, 3, 64}
           : B > 32 ? T{64, 8, 2, 3, 64}
           : B > 24 ? T{64, 4, 2, 3, 64}
           : B > 16 ? T{64, 6, 2, 3, 64}
                    : T{64, 8, 2, 3, 0};
    for (int i = 0; i < 3; ++i) {
      const cuda::MmaTile& o = mixer_tiles_[i];
      if (o.bn) t[i].bn = o.bn;
      if (o.split) t[i].split = o.split;
      if (o.wk) t[i].wk = o.wk;
      if (o.load >= 0) t[i].load = o.load;
      if (o.rows) t[i].rows = o.rows;
    }
  }
  // Every write through the backend (n floats at p, or rows x cols with row stride ld): a
  // frozen weight there loses its bf16 mirror, an x there its prepared norm (mixer_decode_step).
  void note_write(const void* p, size_t bytes) {
    mirrors_->wrote(p, bytes);
    const char *a = static_cast<const char*>(p), *x = reinterpret_cast<const char*>(prepared_.x);
    if (prepared_.x && a < x + prepared_.bytes && x < a + bytes) prepared_ = {};
  }
  void wrote(const float* p, size_t n) {
    if (p && n) note_write(p, n * sizeof(float));
  }
  void wrote(const float* p, int rows, int cols, int ld) {
    if (rows > 0 && cols > 0) wrote(p, size_t(rows - 1) * ld + cols);
  }
  void wrote(Operand p, size_t n) {  // fp32 or bf16 elements
    if (p.p && n) note_write(p.p, n * dtype_bytes(p.dtype));
  }
  void wrote(Operand p, int rows, int cols, int ld) {
    if (rows > 0 && cols > 0) wrote(p, size_t(rows - 1) * ld + cols);
  }
  cuda::MmaTile mma_tile(int K) const {  // the pick's, or K slices of mma_ks_
    cuda::MmaTile t = mma_tile_;
    if (mma_ks_ > 0) t.split = std::clamp((K + mma_ks_ - 1) / mma_ks_, 1, 8);
    return t;
  }
  // A thin output (x_proj's N = 80) stays on decode_mma up to 64 rows: lab at M 32 / 64,
  // 3.29 / 3.75 us against cuBLASLt's 4.34 / 4.33 (NOTES.md, decode_mma); whole m130 decode
  // 0.616 -> 0.568 ms a step at B = 32, 0.682 -> 0.657 at B = 64.
  bool use_mma(int M, int N) const {
    const bool rows_ok = M <= decode_mma_max_m_ || (N <= mma_thin_n_ && M <= kDecodeMaxM);
    return rows_ok && (decode_mma_ == 1 || (decode_mma_ == 2 && N <= 8192));
  }
  // C (M, N) = a16 (M, K) bf16 dense @ w16^T + beta * C, w16 (N, K) row stride ldw a frozen
  // weight's bf16 mirror: decode_mma.cu where it serves and is switched on, else cuBLASLt.
  void decode_w16(int M, int N, int K, const void* a16, const void* w16, int ldw, float beta, float* C, int ldc) {
    if (use_mma(M, N) && cuda::decode_mma_serves(M, N, K, a16, w16, ldw))
      return cuda::decode_mma(stream_, ctx_.pdl, M, N, K, a16, w16, ldw, beta, C, ldc, mma_tile(K));
    gemm_->run_w16(M, N, K, nullptr, K, a16, w16, ldw, beta, C, ldc);
  }
  // The bf16 copy of a frozen weight W (N, K) row stride ldw for a decode product with
  // M rows, or null (not bf16 mode, M too large, W not frozen).
  const void* decode_weight(int M, int N, int K, const float* W, int ldw) const {
    if (!bf16_weights_ || M > kDecodeMaxM || N <= 0 || K <= 0) return nullptr;
    return mirrors_->find(W, size_t(N - 1) * ldw + K);
  }
  // X's bf16 mirror when X (rows, cols) row stride ld lies in frozen weights (freeze_weights;
  // the optimizer freezes them after each update) and the (M, N) product runs in bf16
  // anyway (Gemm::run's rule: the other operand bf16, or both sides >= 128): the GEMM
  // then reads the mirror instead of rounding its own copy per call. Otherwise X.
  ConstOperand mirrored(ConstOperand X, int rows, int cols, int ld, ConstOperand other, int M, int N) const {
    if (!bf16_weights_ || X.dtype != Dtype::f32 || rows <= 0 || cols <= 0) return X;
    if (other.dtype != Dtype::bf16 && std::min(M, N) < 128) return X;
    const void* w16 = mirrors_->find(static_cast<const float*>(X.p), size_t(rows - 1) * ld + cols);
    return w16 ? ConstOperand(w16, Dtype::bf16) : X;
  }
  // The same for a GEMM's B: (N, K) when tb, else (K, N).
  ConstOperand mirrored_b(bool tb, int N, int K, ConstOperand B, int ldb, ConstOperand A, int M) const {
    return mirrored(B, tb ? N : K, tb ? K : N, ldb, A, M, N);
  }
  void to_device(void* dst, const void* src, size_t bytes) {
    if (bytes == 0) return;
    BHASA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
    // The host buffer may be reused as soon as we return.
    BHASA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  cudaStream_t stream_ = nullptr;
  double* host_result_ = nullptr;  // pinned
  Scratch scratch_;
  Ctx ctx_;
  std::unique_ptr<cuda::Gemm> gemm_;
  std::unique_ptr<cuda::OpProfile> profile_;
  bool gemv_ = true;  // small-M products through gemv.cu
  std::unique_ptr<cuda::WeightMirrors> mirrors_;
  bool bf16_weights_ = false;  // freeze_weights makes bf16 copies (bf16 mode)
  bool y_bf16_ = true;  // decode_dtype: bf16 y for 8 < B <= kDecodeMaxM, or from fused_min_b_ (bf16_weights_)
  bool train_graphs_ = true;  // graphs_for_training (unless the op profile is on)
  int decode_mma_ = 0;  // CudaOptions::decode_mma
  bool fused_mixer_ = true;     // mixer_decode_step's own path (CudaOptions::fused_mixer)
  int fused_min_b_ = 2;         // ... from this batch up (BHASA_FUSED_MIXER_MIN_B)
  bool norm_split_ = true;      // there, the next mixer's norm prepared by out_proj (CudaOptions::norm_split)
  bool xproj_fold_ = true;      // and x_proj folded into in_proj (CudaOptions::xproj_fold)
  bool head_mma_ = true;        // a decode step's head on head_mma.cu when its norm is prepared (BHASA_HEAD_MMA)
  bool head_pick_ = true;       // and greedy ids picked by it (head_sample; BHASA_HEAD_PICK)
  bool head_logits_ = false;    // there, the logits stored too (BHASA_HEAD_LOGITS=1; nothing reads them)
  bool head_taken_ = true;      // there, tiles taken in turn by the ready blocks (BHASA_HEAD_TAKEN=0: by index)
  // The next mixer's input as the last mixer_decode_step's out_proj left it (norm_split_):
  // a16 = bf16(x * g) in kDecodeNext16 and the row sums of squares of `tiles` column tiles
  // in kDecodeNextSS, valid while nothing else writes x (note_write).
  struct PreparedNorm {
    const float* x = nullptr;
    const float* g = nullptr;
    int B = 0, tiles = 0;
    size_t bytes = 0;
  } prepared_;
  // The conv states mixer_decode_step has stepped since the last embedding (its kernel is the
  // cut after which a step's kernels may load states early).
  std::vector<const float*> stepped_;
  bool decode_mma_norm_ = true;  // with decode_mma: norm_gemm's RMSNorm folded into it
  int decode_mma_max_m_ = 16;  // CudaOptions::decode_mma_max_m
  int mma_thin_n_ = 128;  // outputs this narrow use decode_mma at any decode M (BHASA_DECODE_MMA_THIN_N)
  cuda::MmaTile mixer_tiles_[3];  // BHASA_MIXER_TILE_IN / _X / _OUT: overrides of mixer_tiles' fields
  cuda::MmaTile mma_tile_;  // decode_mma_pick's, but for the operand loads (BHASA_DECODE_MMA_LOAD)
  int mma_ks_ = 0;  // > 0: K slices of about this many (BHASA_DECODE_MMA_KS), else the pick's
  int w16_min_n_ = 128;  // bf16-weight cuBLASLt products need N >= this (thinner: TF32, as Gemm::run)
  int head_chunk_ = 16384;  // rows per chunk of head_loss
  std::vector<cudaGraphExec_t> graphs_;  // by handle; null once destroyed
  std::vector<uint64_t> graph_scratch_;  // per graph: scratch_.generation() at its capture
  cudaEvent_t events_[kTimerSlots] = {};
  std::string name_;
};

}  // namespace

void* cuda_stream_of(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  check(cuda != nullptr, "cuda_stream_of: backend '" + backend.name() + "' is not the CUDA backend");
  return cuda->stream();
}

bool cuda_gpu_available() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return count > 0;
}

std::unique_ptr<Backend> make_cuda_backend(const CudaOptions& options) {
  if (!cuda_gpu_available())
    throw Error("no CUDA GPU found (or the driver is missing); use --device cpu");
  return std::make_unique<CudaBackend>(options);
}

// The environment's switches: BHASA_CUDA_GEMM=fp32|tf32|bf16|bf16_fast picks the GEMM
// math; BHASA_CUDA_GEMV=0 sends small-M products to cuBLASLt too, BHASA_CUDA_PDL=0
// launches the decode kernels without programmatic dependent launch, BHASA_CUDA_W16=0
// decodes from the fp32 weights in bf16 mode too, BHASA_CUDA_TUNE=0 takes cuBLASLt's
// first algorithm for every GEMM (by default the decode GEMMs and the large training
// ones are timed at their first call; =all: every shape), BHASA_CUDA_W16_MIN_N=<n> sets the narrowest
// output that rounds an fp32 A for a bf16 weight (default 128), BHASA_CUDA_Y16=0 keeps the
// decode step's y in fp32 at every batch (then rounded for out_proj by rows_to_bf16),
// BHASA_CUDA_HEAD_CHUNK=<rows> sets head_loss's chunk, BHASA_DECODE_MMA=0|1|2 the decode
// products' GEMM at 8 < B <= 64 (CudaOptions::decode_mma; read by the backend itself, so
// that it reaches backends made from explicit options too; BHASA_DECODE_MMA_NORM=0 keeps
// norm_gemm's norm as a kernel of its own, BHASA_DECODE_MMA_MAX_M=<m> uses it up to m rows only,
// BHASA_DECODE_MMA_THIN_N=<n> also for outputs of at most n columns at any decode batch (default 128),
// BHASA_DECODE_MMA_LOAD=<0..7> picks its operand loads and BHASA_DECODE_MMA_KS=<k> its K
// slices, decode_mma.h), BHASA_HEAD_MMA=0 runs a batch decode step's head on a norm kernel +
// cuBLASLt instead of head_mma.cu, BHASA_HEAD_PICK=0 keeps greedy sampling a kernel of its
// own and BHASA_HEAD_LOGITS=1 has the head that picks store the logits too (all read by the
// backend itself), BHASA_TRAIN_GRAPHS=0 runs the training
// step launch by launch (both for comparisons).
static CudaOptions options_from_env() {
  CudaOptions opt;
  if (const char* gemm = std::getenv("BHASA_CUDA_GEMM")) opt.gemm = parse_gemm_math(gemm);
  if (const char* chunk = std::getenv("BHASA_CUDA_HEAD_CHUNK")) opt.head_chunk = std::max(1, std::atoi(chunk));
  const char* gemv = std::getenv("BHASA_CUDA_GEMV");
  if (gemv && std::string(gemv) == "0") opt.gemv = false;
  const char* pdl = std::getenv("BHASA_CUDA_PDL");
  if (pdl && std::string(pdl) == "0") opt.pdl = false;
  const char* w16 = std::getenv("BHASA_CUDA_W16");
  if (w16 && std::string(w16) == "0") opt.bf16_weights = false;
  const char* tune = std::getenv("BHASA_CUDA_TUNE");
  if (tune && std::string(tune) == "0") opt.tune_decode = false;
  if (tune && std::string(tune) == "all") opt.tune_all = true;
  const char* y16 = std::getenv("BHASA_CUDA_Y16");
  if (y16 && std::string(y16) == "0") opt.y_bf16 = false;
  const char* graphs = std::getenv("BHASA_TRAIN_GRAPHS");
  if (graphs && std::string(graphs) == "0") opt.train_graphs = false;
  return opt;
}

std::unique_ptr<Backend> make_cuda_backend() { return make_cuda_backend(options_from_env()); }

// gemm_math: a GemmMath name, or empty for the default (the environment's, else bf16).
std::unique_ptr<Backend> make_cuda_backend(const std::string& gemm_math) {
  CudaOptions opt = options_from_env();
  if (!gemm_math.empty()) opt.gemm = parse_gemm_math(gemm_math);
  return make_cuda_backend(opt);
}

}  // namespace bhasa
