// Token embedding lookup and its deterministic scatter-add backward.
//
// Backward: the token positions are sorted by id (a stable radix sort, so equal ids
// keep time order), then cut into chunks of kChunk sorted positions. A block sums
// each run of equal ids inside its chunk in order: a run that starts and ends in the
// chunk is added to its table row at once; the pieces of a run that crosses a chunk
// edge go to per-chunk scratch (head: the piece that began in an earlier chunk, or
// the whole chunk; tail: the piece that continues into the next), and a second
// kernel adds each crossing run's pieces in chunk order. Every table row has one
// writer and a fixed summation order, so the result is bitwise repeatable; and a
// frequent id (a few % of the tokens in text) is summed by many chunks in parallel,
// not by one thread walking thousands of rows.
#include <algorithm>
#include <cub/device/device_radix_sort.cuh>

#include "kernels/cuda/cuda_common.cuh"

namespace bhasa::cuda {

namespace {

constexpr int kChunk = 16;     // sorted positions per block of the first kernel
constexpr int kThreads = 256;  // threads over the columns

// torch: out = table[ids]        ids (T), table (V, D), out (T, D)
__global__ void embedding_forward_kernel(int T, int D, const int32_t* ids, const float* table,
                                         float* out) {
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i >= size_t(T) * D) return;
  const size_t t = i / D, d = i % D;
  out[i] = table[size_t(ids[t]) * D + d];
}

// The same with 16-byte accesses (D % 4 == 0, aligned): 4 columns per thread.
__global__ void embedding_forward_vec(int T, int D, const int32_t* ids, const float* table, float* out) {
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;  // float4 index
  const int D4 = D / 4;
  if (i >= size_t(T) * D4) return;
  const size_t t = i / D4, c = i % D4;
  reinterpret_cast<float4*>(out)[i] = reinterpret_cast<const float4*>(table)[size_t(ids[t]) * D4 + c];
}

__global__ void iota_kernel(int n, int32_t* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = i;
}

// torch: dtable.index_add_(0, ids, dout)      dtable (V, D) +=
// Chunk c = blockIdx.x holds sorted positions [c * kChunk, ...). For each run piece
// [a, b] in the chunk, s = sum of dout rows in order, then:
//   run inside the chunk:                 dtable[id] += s
//   run began before the chunk:           head[c] = s  (the whole chunk if it also continues)
//   run began here and continues after:   tail[c] = s
__global__ void __launch_bounds__(kThreads)
embedding_backward_chunks(int T, int D, int V, const int32_t* sorted_ids, const int32_t* positions,
                          const float* __restrict__ dout, float* dtable, float* head, float* tail) {
  __shared__ int32_t id_s[kChunk + 2], pos_s[kChunk];  // id_s[0]: the id before; [kChunk+1]: after
  const int c = blockIdx.x, p0 = c * kChunk, n = min(kChunk, T - p0);
  for (int j = threadIdx.x; j < kChunk + 2; j += blockDim.x) {
    const int p = p0 - 1 + j;
    id_s[j] = p >= 0 && p < T && j <= n + 1 ? sorted_ids[p] : -1;
  }
  for (int j = threadIdx.x; j < n; j += blockDim.x) pos_s[j] = positions[p0 + j];
  __syncthreads();
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    // dout rows, and the table entry of each position's id, all loaded up front: the
    // table is read before any write of this block (only this block writes these ids),
    // so the read-modify-writes below are not a chain of dependent round trips.
    float v[kChunk], tv[kChunk];
#pragma unroll
    for (int j = 0; j < kChunk; ++j) {
      const int id = id_s[j + 1];
      v[j] = j < n ? dout[size_t(pos_s[j]) * D + d] : 0.0f;
      const bool run_ends = j + 1 >= n || id_s[j + 2] != id;
      tv[j] = j < n && run_ends && id >= 0 && id < V ? dtable[size_t(id) * D + d] : 0.0f;
    }
    float s = 0.0f;
    int a = 0;  // start of the current piece
#pragma unroll
    for (int j = 0; j < kChunk; ++j) {
      if (j >= n) break;
      s += v[j];
      const int id = id_s[j + 1];
      if (j + 1 < n && id_s[j + 2] == id) continue;  // the run goes on in this chunk
      const bool before = a == 0 && id_s[0] == id;
      const bool after = j + 1 == n && id_s[n + 1] == id;
      if (before) head[size_t(c) * D + d] = s;
      else if (after) tail[size_t(c) * D + d] = s;
      else if (id >= 0 && id < V) dtable[size_t(id) * D + d] = tv[j] + s;  // ids were validated on the host
      s = 0.0f;
      a = j + 1;
    }
  }
}

// The runs that cross chunk edges: the chunk where such a run begins adds
// tail[c] + head[c+1] + ... + head[last chunk of the run], in that order.
__global__ void __launch_bounds__(kThreads)
embedding_backward_crossing(int T, int D, int V, int n_chunks, const int32_t* sorted_ids,
                            const float* head, const float* tail, float* dtable) {
  const int c = blockIdx.x;
  const int last = min(T, (c + 1) * kChunk) - 1;  // the chunk's last sorted position
  if (last + 1 >= T) return;
  const int id = sorted_ids[last];
  if (sorted_ids[last + 1] != id) return;                           // no run crosses the end
  if (c > 0 && sorted_ids[c * kChunk] == id && sorted_ids[c * kChunk - 1] == id) return;  // began earlier
  if (id < 0 || id >= V) return;
  // the run's last position: binary search in the sorted ids (same in every thread)
  int lo = last + 1, hi = T - 1;  // sorted_ids[lo] == id
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (sorted_ids[mid] == id) lo = mid;
    else hi = mid - 1;
  }
  const int c_end = lo / kChunk;  // the chunk where the run ends
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float s = tail[size_t(c) * D + d];
#pragma unroll 8
    for (int k = c + 1; k <= c_end; ++k) s += head[size_t(k) * D + d];
    dtable[size_t(id) * D + d] += s;
  }
}

int bits_for(int V) {
  int bits = 1;
  while ((1ll << bits) < V) ++bits;
  return bits;
}

}  // namespace

void embedding_forward(Ctx& c, int T, int D, const int32_t* ids, const float* table, float* out) {
  const size_t n = size_t(T) * D;
  if (n == 0) return;
  if (D % 4 == 0 && aligned16(table) && aligned16(out))
    embedding_forward_vec<<<blocks_for(n / 4, 256), 256, 0, c.stream>>>(T, D, ids, table, out);
  else
    embedding_forward_kernel<<<blocks_for(n, 256), 256, 0, c.stream>>>(T, D, ids, table, out);
  BHASA_LAUNCH_CHECK("embedding_forward");
}

namespace {

// torch: out = table[ids];  a16 = (out * g).bfloat16();  ss = (out * out).sum(-1)
// A decode step's embedding that also prepares the first mixer's RMSNorm, as out_proj's
// decode_mma_next_norm does for the next ones (one column tile: ss (B)). A block a row, a
// thread a float4 column (up to D = 4096; past that a thread takes more): every load of the
// row is in flight at once after the id's, where 128 threads at D = 768 made two trips to
// DRAM in a row. The row's sum in a fixed order (lanes by a shuffle tree, then warps).
__global__ void embedding_prenorm_kernel(int D, const int32_t* __restrict__ ids, const float* __restrict__ table,
                                         const float* __restrict__ g, float* __restrict__ out,
                                         __nv_bfloat16* __restrict__ a16, float* __restrict__ ss) {
  __shared__ float warp_ss[32];
  const int b = blockIdx.x, D4 = D / 4;
  const float4* g4 = reinterpret_cast<const float4*>(g);
  const float4 w0 = threadIdx.x < D4 ? g4[threadIdx.x] : float4{};  // a weight: before the wait
  pdl_wait();  // ids come from the previous step's sampler
  // The next kernel launches only now, once the previous step's kernels have all ended (the
  // head's pdl_wait waited for the last mixer's, and so on back). The mixer's kernels load
  // their layer's states before their own wait, taking the writer (the same layer a step
  // earlier) to be done; but each lets its dependent launch at its start, so without this cut
  // launches could run a whole step ahead where the blocks are small enough to all fit: a
  // one-layer model read stale states (GenerateTokens.CudaGraphOneLayerMatchesStepLoop failed
  // on the H200 with the trigger before the wait). m130, B = 64: 0.440-0.441 ms a step either
  // way (NOTES.md, session 15).
  pdl_trigger();
  const float4* row = reinterpret_cast<const float4*>(table) + size_t(ids[b]) * D4;
  float sum = 0.f;
  for (int c = threadIdx.x; c < D4; c += blockDim.x) {
    const float4 x = row[c], w = c == int(threadIdx.x) ? w0 : g4[c];
    reinterpret_cast<float4*>(out)[size_t(b) * D4 + c] = x;
    store4(a16 + size_t(b) * D + 4 * c, make_float4(x.x * w.x, x.y * w.y, x.z * w.z, x.w * w.w));
    sum += (x.x * x.x + x.y * x.y) + (x.z * x.z + x.w * x.w);
  }
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if (threadIdx.x % 32 == 0) warp_ss[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0.f;
    for (int w = 0; w < int(blockDim.x / 32); ++w) t += warp_ss[w];
    ss[b] = t;
  }
}

}  // namespace

bool embedding_prenorm(Ctx& c, int B, int D, const int32_t* ids, const float* table, const float* g, float* out,
                       void* a16, float* ss) {
  if (B <= 0 || D % 4 || !aligned16(table) || !aligned16(g) || !aligned16(out) || reinterpret_cast<uintptr_t>(a16) % 8)
    return false;
  const int threads = std::min(1024, (D / 4 + 31) / 32 * 32);
  launch(embedding_prenorm_kernel, dim3(B), dim3(threads), 0, c.stream, c.pdl, D, ids, table, g, out,
         static_cast<__nv_bfloat16*>(a16), ss);
  return true;
}

void embedding_backward(Ctx& c, int T, int D, int V, const int32_t* ids, const float* dout,
                        float* dtable) {
  if (T == 0 || D == 0) return;
  auto* keys = static_cast<int32_t*>(c.scratch->get(kSortKeys, 2 * size_t(T) * sizeof(int32_t)));
  auto* vals = static_cast<int32_t*>(c.scratch->get(kSortVals, 2 * size_t(T) * sizeof(int32_t)));
  int32_t* sorted_ids = keys + T;
  int32_t* positions_in = vals;
  int32_t* positions = vals + T;
  iota_kernel<<<blocks_for(T, 256), 256, 0, c.stream>>>(T, positions_in);
  BHASA_LAUNCH_CHECK("iota");
  size_t temp_bytes = 0;
  const int end_bit = bits_for(V);
  BHASA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, ids, sorted_ids, positions_in,
                                                   positions, T, 0, end_bit, c.stream));
  const int n_chunks = int(blocks_for(T, kChunk));
  const size_t piece_bytes = size_t(n_chunks) * D * sizeof(float);  // head, then tail
  const size_t temp_at = (2 * piece_bytes + 255) / 256 * 256;
  auto* temp = static_cast<char*>(c.scratch->get(kSortTemp, temp_at + temp_bytes));
  float* head = reinterpret_cast<float*>(temp);
  float* tail = head + size_t(n_chunks) * D;
  BHASA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp + temp_at, temp_bytes, ids, sorted_ids, positions_in,
                                                   positions, T, 0, end_bit, c.stream));
  embedding_backward_chunks<<<n_chunks, kThreads, 0, c.stream>>>(T, D, V, sorted_ids, positions, dout, dtable,
                                                                 head, tail);
  BHASA_LAUNCH_CHECK("embedding_backward_chunks");
  embedding_backward_crossing<<<n_chunks, kThreads, 0, c.stream>>>(T, D, V, n_chunks, sorted_ids, head, tail,
                                                                   dtable);
  BHASA_LAUNCH_CHECK("embedding_backward_crossing");
}

}  // namespace bhasa::cuda
