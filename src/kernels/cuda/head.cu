// The training head (Backend::head_loss): the tied LM head, its cross-entropy and their
// gradients on chunks of rows, so the (T, V) fp32 logits of the whole batch never exist
// (6.6 GB at T = 32768, V = 50280; the separate ops wrote them, read and rewrote them as
// dlogits, then copied them to bf16 for the two backward GEMMs).
//
// With bf16 GEMMs, per chunk of rows t0..t0+n:
//   logits (n, V) bf16 = X[t0:] @ W^T          one cuBLASLt GEMM, bf16 output
//   loss rows, logits := bf16 dlogits          xent_bf16_rows: one read, one write
//   dX[t0:] = dlogits @ W                      bf16 GEMM straight from the chunk
//   dW     += dlogits^T @ X[t0:]               the same
// W (and X when fp32) is rounded to bf16 once per call. Other GEMM maths run the same steps on an
// fp32 chunk through the ordinary GEMM and cross-entropy (for tests against the CPU).
// Measured at m130's (32768, 50280, 768) on the H200 (bench/cuda_lab/NOTES.md): 12.2 ms
// per step at chunk 16384 against 18.1 ms for the separate ops; the three GEMMs are 80%
// of it. Running the cross-entropy on a second stream beside the GEMMs saved 0.1 ms
// (cuBLASLt's GEMMs hold every SM), so it is not done.
#include <algorithm>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/gemm.cuh"

namespace bhasa::cuda {

double head_loss(Ctx& c, Gemm& gemm, int chunk, int T, int V, int D, ConstOperand X, const float* W,
                 const void* W16, const int32_t* targets, float dlogits_scale, Operand dX, float* dW) {
  if (T == 0) return 0.0;
  // With BHASA_CUDA_PROFILE, each step of the loop gets its own (nested) row.
  OpProfile* prof = gemm.profile();
  auto part = [&](const char* name) { return prof ? prof->begin(name) : -1; };
  const bool grad = dlogits_scale != 0.0f;
  const int rows = std::max(1, std::min(T, chunk));
  auto* row_loss = static_cast<double*>(c.scratch->get(kRowLoss, size_t(T) * sizeof(double)));  // (T)
  int* flags = xent_flags(c);
  if (gemm.math() == GemmMath::bf16) {
    // (T, D): the model stores it in bf16 already (operand_dtype())
    const __nv_bfloat16* Xb = X.dtype == Dtype::bf16 ? static_cast<const __nv_bfloat16*>(X.p)
                                                     : gemm.to_bf16(X.f32(), T, D, D, 0);
    // (V, D): the frozen weights' bf16 mirror when there is one
    const __nv_bfloat16* Wb = W16 ? static_cast<const __nv_bfloat16*>(W16) : gemm.to_bf16(W, V, D, D, 1);
    // Rows 128-byte aligned: at m130 (V = 50280) the logits GEMM ran 1.80 -> 1.72 ms a chunk,
    // its dX product 1.58 -> 1.53 and the cross-entropy 1.14 -> 1.11 against 16-byte rows.
    const int ldl = (V + 63) / 64 * 64;
    auto* logits = static_cast<__nv_bfloat16*>(
        c.scratch->get(kHeadLogits, size_t(rows) * ldl * sizeof(__nv_bfloat16)));  // (rows, ldl)
    for (int t0 = 0; t0 < T; t0 += rows) {
      const int n = std::min(rows, T - t0);
      const __nv_bfloat16* x = Xb + size_t(t0) * D;
      {
        OpProfile::Scope s(prof, part("  (head_loss: logits GEMM, bf16 out)"));
        gemm.run_bf16(false, true, n, V, D, x, D, Wb, D, 0.0f, logits, ldl, true);
      }
      {
        OpProfile::Scope s(prof, part("  (head_loss: cross-entropy on bf16)"));
        xent_bf16_rows(c, n, V, logits, ldl, targets + t0, dlogits_scale, row_loss + t0, flags);
      }
      if (!grad) continue;
      {
        OpProfile::Scope s(prof, part("  (head_loss: dX GEMM)"));
        gemm.run_bf16(false, false, n, D, V, logits, ldl, Wb, D, 0.0f, (dX + size_t(t0) * D).p, D,
                      dX.dtype == Dtype::bf16);
      }
      OpProfile::Scope s(prof, part("  (head_loss: dW GEMM)"));
      gemm.run_bf16(true, false, V, D, n, logits, ldl, x, D, 1.0f, dW, D, false);
    }
  } else {
    auto* logits = static_cast<float*>(c.scratch->get(kHeadLogits, size_t(rows) * V * sizeof(float)));  // (rows, V)
    for (int t0 = 0; t0 < T; t0 += rows) {
      const int n = std::min(rows, T - t0);
      const ConstOperand x = X + size_t(t0) * D;
      gemm.run(false, true, n, V, D, x, D, W, D, 0.0f, logits, V);
      xent_rows(c, n, V, logits, V, targets + t0, dlogits_scale, row_loss + t0, flags);
      if (!grad) continue;
      gemm.run(false, false, n, D, V, logits, V, W, D, 0.0f, dX + size_t(t0) * D, D);
      gemm.run(true, false, V, D, n, logits, V, x, D, 1.0f, dW, D);
    }
  }
  return xent_total(c, T, V, row_loss);
}

}  // namespace bhasa::cuda
