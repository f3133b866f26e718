// RMSNorm and LayerNorm, forward and backward: one warp per row.
// Fast path (D % 4 == 0, D <= 1024, 16-byte aligned rows): a lane keeps its
// NV = ceil(D / 128) float4s of the row in registers, so x (and dout) are read once;
// the backward also accumulates dw/db in registers over a fixed group of rows and
// writes one partial per group (block), summed over groups in a fixed order: no
// atomics, no second pass over dout and x. Other shapes take the plain kernels.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "kernels/cuda/cuda_common.cuh"

namespace bhasa::cuda {

namespace {

constexpr int kRowsPerBlock = 8;  // warps per block, one row each
constexpr int kRowGroups = 256;   // partial sums of dw/db per column
constexpr int kMaxVec = 8;        // float4s per lane on the fast path: D <= 1024

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// rms:   torch: out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
// layer: torch: out = F.layer_norm(x, (D,), w, b, eps)
// x (T, D), w (D), b (D) or null, out (T, D) fp32 or bf16 (O), mean (T) (layer only), rstd (T)
template <int NV, class O>
__global__ void __launch_bounds__(32 * kRowsPerBlock)
norm_forward_vec(int T, int D, bool rms, float eps, const float* x, const float* w,
                 const float* b, O* out, float* mean, float* rstd) {
  const int t = blockIdx.x * kRowsPerBlock + threadIdx.y;
  const int lane = threadIdx.x, D4 = D / 4;
  if (t >= T) return;
  const float4* xt = reinterpret_cast<const float4*>(x + size_t(t) * D);
  float4 xv[NV];
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    const int c = lane + 32 * j;
    xv[j] = c < D4 ? xt[c] : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  float mu = 0.0f;
  if (!rms) {
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < NV; ++j) s += (xv[j].x + xv[j].y) + (xv[j].z + xv[j].w);
    mu = warp_sum(s) / D;
  }
  float ss = 0.0f;  // sum of squares about mu
#pragma unroll
  for (int j = 0; j < NV; ++j)
    if (lane + 32 * j < D4) {
      const float a = xv[j].x - mu, bb = xv[j].y - mu, c = xv[j].z - mu, d = xv[j].w - mu;
      ss += (a * a + bb * bb) + (c * c + d * d);
    }
  const float r = 1.0f / sqrtf(warp_sum(ss) / D + eps);
  O* ot = out + size_t(t) * D;
  const float4* w4 = reinterpret_cast<const float4*>(w);
  const float4* b4 = reinterpret_cast<const float4*>(b);
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    const int c = lane + 32 * j;
    if (c >= D4) continue;
    const float4 wv = w4[c], bv = b ? b4[c] : make_float4(0.f, 0.f, 0.f, 0.f);
    store4(ot + 4 * c, make_float4((xv[j].x - mu) * r * wv.x + bv.x, (xv[j].y - mu) * r * wv.y + bv.y,
                                   (xv[j].z - mu) * r * wv.z + bv.z, (xv[j].w - mu) * r * wv.w + bv.w));
  }
  if (lane == 0) {
    if (mean) mean[t] = mu;
    rstd[t] = r;
  }
}

// The norm backward kernels' last step: a block's dw (and, LayerNorm, db) partials aw / ab,
// one set per warp, summed over the 8 warps in order into row blockIdx.x of pdw / pdb.
template <int NV, bool RMS>
__device__ __forceinline__ void write_group_partials(float4 (&red)[kRowsPerBlock][32 * NV], const float4 (&aw)[NV],
                                                     const float4 (&ab)[RMS ? 1 : NV], int D, float* pdw,
                                                     float* pdb) {
  const int lane = threadIdx.x, D4 = D / 4;
#pragma unroll
  for (int pass = 0; pass < (RMS ? 1 : 2); ++pass) {
    float* part = (pass ? pdb : pdw) + size_t(blockIdx.x) * D;
#pragma unroll
    for (int j = 0; j < NV; ++j) red[threadIdx.y][lane + 32 * j] = pass ? ab[RMS ? 0 : j] : aw[j];
    __syncthreads();
    for (int c = threadIdx.y * 32 + lane; c < D4; c += 32 * kRowsPerBlock) {
      float4 s = red[0][c];
      for (int y = 1; y < kRowsPerBlock; ++y) {
        const float4 v = red[y][c];
        s = make_float4(s.x + v.x, s.y + v.y, s.z + v.z, s.w + v.w);
      }
      reinterpret_cast<float4*>(part)[c] = s;
    }
    __syncthreads();
  }
}

// dx += rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dout * w,  xhat = (x - mean) * rstd
// (mean(g) term only for LayerNorm). Block g walks rows [g * rows_per_group, ...): warp y
// takes rows y, y + 8, ...; pdw[g][d] = sum over those rows of dout * xhat (pdb: of dout),
// the 8 warps added in order through shared memory. w is re-read per row (L1 hits) and dx
// loaded only where it is updated: at D = 768 that keeps 2 blocks (16 warps) per SM, so the
// 256 groups run in one wave.
// dout (T, D) fp32 or bf16 (G); dx_copy (T, D) fp32 or bf16 (CO) or null: the updated dx again.
template <int NV, bool RMS, class G, class CO>
__global__ void __launch_bounds__(32 * kRowsPerBlock, 2)
norm_backward_vec(int T, int D, const G* dout, const float* x, const float* w,
                  const float* mean, const float* rstd, float* dx, CO* dx_copy, int rows_per_group,
                  float* pdw, float* pdb) {
  __shared__ float4 red[kRowsPerBlock][32 * NV];
  const int lane = threadIdx.x, D4 = D / 4;
  const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
  const float4* w4 = reinterpret_cast<const float4*>(w);
  float4 aw[NV], ab[RMS ? 1 : NV];
#pragma unroll
  for (int j = 0; j < NV; ++j) aw[j] = zero;
#pragma unroll
  for (int j = 0; j < (RMS ? 1 : NV); ++j) ab[j] = zero;
  const int t1 = min(T, (blockIdx.x + 1) * rows_per_group);
  for (int t = blockIdx.x * rows_per_group + threadIdx.y; t < t1; t += kRowsPerBlock) {
    const float4* xt = reinterpret_cast<const float4*>(x + size_t(t) * D);
    const G* gt = dout + size_t(t) * D;
    float4* dxt = reinterpret_cast<float4*>(dx + size_t(t) * D);
    float4 xv[NV], gv[NV];
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      const int c = lane + 32 * j;
      xv[j] = c < D4 ? xt[c] : zero;
      gv[j] = c < D4 ? load4(gt + 4 * c) : zero;
    }
    const float mu = RMS ? 0.0f : mean[t];
    const float r = rstd[t];
    float sg = 0.0f, sgx = 0.0f;
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      const int c = lane + 32 * j;
      const float4 wv = c < D4 ? __ldg(w4 + c) : zero;
      const float4 g = make_float4(gv[j].x * wv.x, gv[j].y * wv.y, gv[j].z * wv.z, gv[j].w * wv.w);
      sg += (g.x + g.y) + (g.z + g.w);
      sgx += (g.x * (xv[j].x - mu) * r + g.y * (xv[j].y - mu) * r) +
             (g.z * (xv[j].z - mu) * r + g.w * (xv[j].w - mu) * r);
    }
    const float mean_g = RMS ? 0.0f : warp_sum(sg) / D;
    const float mean_gx = warp_sum(sgx) / D;
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      const int c = lane + 32 * j;
      if (c >= D4) continue;
      float4 dv = dxt[c];
      const float4 wv = __ldg(w4 + c);
      const float* xs = &xv[j].x;
      const float* gs = &gv[j].x;
      const float* ws = &wv.x;
      float* ds = &dv.x;
      float* as = &aw[j].x;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float xhat = (xs[q] - mu) * r;
        ds[q] += r * (gs[q] * ws[q] - mean_g - xhat * mean_gx);
        as[q] += gs[q] * xhat;
        if constexpr (!RMS) (&ab[j].x)[q] += gs[q];
      }
      dxt[c] = dv;
      if (dx_copy) store4(dx_copy + size_t(t) * D + 4 * c, dv);
    }
  }
  write_group_partials<NV, RMS>(red, aw, ab, D, pdw, pdb);
}

// norm_backward_vec with every load of a row issued before the first use: dx with x and
// dout (norm_backward_vec loaded dx only after the two warp sums, a second memory latency
// per row), dout kept packed (bf16: 8 bytes per 4 values) until used. The same arithmetic in
// the source, but ptxas fuses other multiply-adds into FMAs: at (32768, 768), bf16 dout, dx
// differs from norm_backward_vec's in the last bit in 3.8% of elements (the same error
// against float64, 3.4e-8), dw not at all. H200: 0.1119 ms against 0.1237 (floor 0.0939);
// the next row's x and dout by cp.async into shared memory meanwhile measured 0.1128.
template <class G> struct Raw4;
template <> struct Raw4<float> {
  using T = float4;
  static __device__ __forceinline__ float4 unpack(float4 v) { return v; }
};
template <> struct Raw4<__nv_bfloat16> {
  using T = uint2;
  static __device__ __forceinline__ float4 unpack(uint2 u) {
    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
    const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
    return make_float4(a.x, a.y, b.x, b.y);
  }
};
template <int NV, bool RMS, class G, class CO>
__global__ void __launch_bounds__(32 * kRowsPerBlock, 2)
norm_backward_vec2(int T, int D, const G* dout, const float* x, const float* w,
                   const float* mean, const float* rstd, float* dx, CO* dx_copy, int rows_per_group,
                   float* pdw, float* pdb) {
  using R = Raw4<G>;
  using RT = typename R::T;
  __shared__ float4 red[kRowsPerBlock][32 * NV];
  const int lane = threadIdx.x, D4 = D / 4;
  const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
  const float4* w4 = reinterpret_cast<const float4*>(w);
  float4 aw[NV], ab[RMS ? 1 : NV];
#pragma unroll
  for (int j = 0; j < NV; ++j) aw[j] = zero;
#pragma unroll
  for (int j = 0; j < (RMS ? 1 : NV); ++j) ab[j] = zero;
  const int t1 = min(T, (blockIdx.x + 1) * rows_per_group);
  for (int t = blockIdx.x * rows_per_group + threadIdx.y; t < t1; t += kRowsPerBlock) {
    const float4* xt = reinterpret_cast<const float4*>(x + size_t(t) * D);
    const RT* gt = reinterpret_cast<const RT*>(dout + size_t(t) * D);
    float4* dxt = reinterpret_cast<float4*>(dx + size_t(t) * D);
    float4 xv[NV], dv[NV];
    RT gr[NV];
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      const int c = lane + 32 * j;
      if (c < D4) {
        xv[j] = xt[c];
        gr[j] = gt[c];
        dv[j] = dxt[c];
      }
    }
    const float mu = RMS ? 0.0f : mean[t];
    const float r = rstd[t];
    float sg = 0.0f, sgx = 0.0f;
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      const int c = lane + 32 * j;
      const float4 wv = c < D4 ? __ldg(w4 + c) : zero;
      const float4 gv = c < D4 ? R::unpack(gr[j]) : zero;
      const float4 xx = c < D4 ? xv[j] : zero;
      const float4 g = make_float4(gv.x * wv.x, gv.y * wv.y, gv.z * wv.z, gv.w * wv.w);
      sg += (g.x + g.y) + (g.z + g.w);
      sgx += (g.x * (xx.x - mu) * r + g.y * (xx.y - mu) * r) +
             (g.z * (xx.z - mu) * r + g.w * (xx.w - mu) * r);
    }
    const float mean_g = RMS ? 0.0f : warp_sum(sg) / D;
    const float mean_gx = warp_sum(sgx) / D;
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      const int c = lane + 32 * j;
      if (c >= D4) continue;
      const float4 wv = __ldg(w4 + c);
      const float4 gv = R::unpack(gr[j]);
      const float* xs = &xv[j].x;
      const float* gs = &gv.x;
      const float* ws = &wv.x;
      float* ds = &dv[j].x;
      float* as = &aw[j].x;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float xhat = (xs[q] - mu) * r;
        ds[q] += r * (gs[q] * ws[q] - mean_g - xhat * mean_gx);
        as[q] += gs[q] * xhat;
        if constexpr (!RMS) (&ab[j].x)[q] += gs[q];
      }
      dxt[c] = dv[j];
      if (dx_copy) store4(dx_copy + size_t(t) * D + 4 * c, dv[j]);
    }
  }
  write_group_partials<NV, RMS>(red, aw, ab, D, pdw, pdb);
}

// BHASA_NORM_BWD_V=old: main's norm_backward_vec instead of norm_backward_vec2 (an A/B
// switch, read at each call).
bool norm_bwd_old() {
  const char* e = std::getenv("BHASA_NORM_BWD_V");
  return e && std::string(e) == "old";
}

// The plain kernels, for any D and alignment.
template <class O>
__global__ void norm_forward_kernel(int T, int D, bool rms, float eps, const float* x,
                                    const float* w, const float* b, O* out, float* mean,
                                    float* rstd) {
  const int t = blockIdx.x * kRowsPerBlock + threadIdx.y;
  const int lane = threadIdx.x;
  if (t >= T) return;
  const float* xt = x + size_t(t) * D;
  O* ot = out + size_t(t) * D;
  float mu = 0.0f;
  if (!rms) {
    float s = 0.0f;
    for (int d = lane; d < D; d += 32) s += xt[d];
    mu = warp_sum(s) / D;
  }
  float ss = 0.0f;  // sum of squares about mu
  for (int d = lane; d < D; d += 32) ss += (xt[d] - mu) * (xt[d] - mu);
  const float r = 1.0f / sqrtf(warp_sum(ss) / D + eps);
  for (int d = lane; d < D; d += 32) ot[d] = from_float<O>((xt[d] - mu) * r * w[d] + (b ? b[d] : 0.0f));
  if (lane == 0) {
    if (mean) mean[t] = mu;
    rstd[t] = r;
  }
}

template <class G, class CO>
__global__ void norm_backward_dx_kernel(int T, int D, bool rms, const G* dout,
                                        const float* x, const float* w, const float* mean,
                                        const float* rstd, float* dx, CO* dx_copy) {
  const int t = blockIdx.x * kRowsPerBlock + threadIdx.y;
  const int lane = threadIdx.x;
  if (t >= T) return;
  const float* xt = x + size_t(t) * D;
  const G* gt = dout + size_t(t) * D;
  float* dxt = dx + size_t(t) * D;
  const float mu = rms ? 0.0f : mean[t];
  const float r = rstd[t];
  float sg = 0.0f, sgx = 0.0f;
  for (int d = lane; d < D; d += 32) {
    const float g = to_float(gt[d]) * w[d];
    sg += g;
    sgx += g * (xt[d] - mu) * r;
  }
  const float mean_g = rms ? 0.0f : warp_sum(sg) / D;
  const float mean_gx = warp_sum(sgx) / D;
  for (int d = lane; d < D; d += 32) {
    const float xhat = (xt[d] - mu) * r;
    dxt[d] += r * (to_float(gt[d]) * w[d] - mean_g - xhat * mean_gx);
    if (dx_copy) dx_copy[size_t(t) * D + d] = from_float<CO>(dxt[d]);
  }
}

// partial[p][d] = sum over rows of group p of dout * xhat (and of dout for db).
template <class G>
__global__ void norm_backward_dw_partials(int T, int D, bool rms, const G* dout,
                                          const float* x, const float* mean, const float* rstd,
                                          int rows_per_group, float* pdw, float* pdb) {
  const int d = blockIdx.x * blockDim.x + threadIdx.x;
  const int p = blockIdx.y;
  if (d >= D) return;
  const int t0 = p * rows_per_group, t1 = min(T, t0 + rows_per_group);
  float sw = 0.0f, sb = 0.0f;
#pragma unroll 4
  for (int t = t0; t < t1; ++t) {
    const float g = to_float(dout[size_t(t) * D + d]);
    const float mu = rms ? 0.0f : mean[t];
    sw += g * (x[size_t(t) * D + d] - mu) * rstd[t];
    sb += g;
  }
  pdw[size_t(p) * D + d] = sw;
  pdb[size_t(p) * D + d] = sb;
}

// dw[d] += sum_p pdw[p][d] (in p order); likewise db.
__global__ void __launch_bounds__(kColSumLanes * kColSumRows)
norm_backward_dw_finish(int D, int groups, const float* pdw, const float* pdb, float* dw, float* db) {
  const int d = blockIdx.x * kColSumLanes + threadIdx.x;
  const float sw = column_sum_in_order(D, groups, pdw);
  const float sb = db ? column_sum_in_order(D, groups, pdb) : 0.0f;
  if (threadIdx.y != 0 || d >= D) return;
  dw[d] += sw;
  if (db) db[d] += sb;
}

// Calls f(std::integral_constant<int, NV>) with NV >= D / 128 in {1, 2, 4, 6, 8}.
template <class F>
void with_vec(int D, F&& f) {
  const int nv = (D / 4 + 31) / 32;
  if (nv <= 1) return f(std::integral_constant<int, 1>{});
  if (nv <= 2) return f(std::integral_constant<int, 2>{});
  if (nv <= 4) return f(std::integral_constant<int, 4>{});
  if (nv <= 6) return f(std::integral_constant<int, 6>{});
  return f(std::integral_constant<int, 8>{});
}

bool fast_path(int D, std::initializer_list<const void*> ptrs) {
  if (D % 4 != 0 || D > 128 * kMaxVec) return false;
  for (const void* p : ptrs)
    if (p && reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

}  // namespace

void norm_forward(Ctx& c, int T, int D, bool rms, float eps, const float* x, const float* w,
                  const float* b, Operand out, float* mean, float* rstd) {
  if (T == 0) return;
  const dim3 block(32, kRowsPerBlock);
  with_operand(out, [&](auto* o) {
    using O = std::remove_pointer_t<decltype(o)>;
    // rows of 4-element stores: 16 bytes (fp32) or 8 (bf16) aligned
    if (fast_path(D, {x, w, b}) && reinterpret_cast<uintptr_t>(o) % (4 * sizeof(O)) == 0) {
      with_vec(D, [&](auto nv) {
        norm_forward_vec<decltype(nv)::value, O><<<blocks_for(T, kRowsPerBlock), block, 0, c.stream>>>(
            T, D, rms, eps, x, w, b, o, mean, rstd);
      });
    } else {
      norm_forward_kernel<O><<<blocks_for(T, kRowsPerBlock), block, 0, c.stream>>>(T, D, rms, eps, x, w, b, o,
                                                                                    mean, rstd);
    }
  });
  BHASA_LAUNCH_CHECK("norm_forward");
}

void norm_backward(Ctx& c, int T, int D, bool rms, ConstOperand dout_, const float* x,
                   const float* w, const float* mean, const float* rstd, float* dx, float* dw,
                   float* db, Operand dx_copy) {
  if (T == 0) return;
  const int rows_per_group = (T + kRowGroups - 1) / kRowGroups;
  const int groups = (T + rows_per_group - 1) / rows_per_group;
  auto* part = static_cast<float*>(c.scratch->get(kNormPartials, 2 * size_t(groups) * D * sizeof(float)));
  float* pdw = part;                       // (groups, D)
  float* pdb = part + size_t(groups) * D;  // (groups, D)
  const dim3 block(32, kRowsPerBlock);
  with_operand(dout_, [&](auto* dout) {
  with_operand(dx_copy, [&](auto* cp) {  // a null dx_copy is an fp32 one, never stored
    using G = std::remove_const_t<std::remove_pointer_t<decltype(dout)>>;
    using CO = std::remove_pointer_t<decltype(cp)>;
    // rows of 4-element loads and stores: 16 bytes (fp32) or 8 (bf16) aligned
    if (fast_path(D, {x, w, dx}) && reinterpret_cast<uintptr_t>(dout) % (4 * sizeof(G)) == 0 &&
        reinterpret_cast<uintptr_t>(cp) % (4 * sizeof(CO)) == 0) {
      with_vec(D, [&](auto nv) {
        constexpr int NV = decltype(nv)::value;
        const bool old = norm_bwd_old();
        auto v2 = [&](auto kernel) {
          kernel<<<groups, block, 0, c.stream>>>(T, D, dout, x, w, mean, rstd, dx, cp, rows_per_group, pdw, pdb);
        };
        if (!old && rms) v2(norm_backward_vec2<NV, true, G, CO>);
        else if (!old) v2(norm_backward_vec2<NV, false, G, CO>);
        else if (rms)
          norm_backward_vec<NV, true, G, CO><<<groups, block, 0, c.stream>>>(T, D, dout, x, w, mean, rstd, dx,
                                                                             cp, rows_per_group, pdw, pdb);
        else
          norm_backward_vec<NV, false, G, CO><<<groups, block, 0, c.stream>>>(T, D, dout, x, w, mean, rstd, dx,
                                                                              cp, rows_per_group, pdw, pdb);
      });
      BHASA_LAUNCH_CHECK("norm_backward");
      return;
    }
    norm_backward_dx_kernel<G, CO><<<blocks_for(T, kRowsPerBlock), block, 0, c.stream>>>(T, D, rms, dout, x, w,
                                                                                          mean, rstd, dx, cp);
    BHASA_LAUNCH_CHECK("norm_backward_dx");
    norm_backward_dw_partials<G><<<dim3(blocks_for(D, 128), groups), 128, 0, c.stream>>>(
        T, D, rms, dout, x, mean, rstd, rows_per_group, pdw, pdb);
    BHASA_LAUNCH_CHECK("norm_backward_dw_partials");
  });
  });
  norm_backward_dw_finish<<<blocks_for(D, kColSumLanes), dim3(kColSumLanes, kColSumRows), 0, c.stream>>>(
      D, groups, pdw, pdb, dw, db);
  BHASA_LAUNCH_CHECK("norm_backward_dw_finish");
}

}  // namespace bhasa::cuda
