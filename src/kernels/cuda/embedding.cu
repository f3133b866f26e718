// Token embedding lookup and its deterministic scatter-add backward.
#include <cub/device/device_radix_sort.cuh>

#include "kernels/cuda/cuda_common.cuh"

namespace bhasa::cuda {

namespace {

// torch: out = table[ids]        ids (T), table (V, D), out (T, D)
__global__ void embedding_forward_kernel(int T, int D, const int32_t* ids, const float* table,
                                         float* out) {
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i >= size_t(T) * D) return;
  const size_t t = i / D, d = i % D;
  out[i] = table[size_t(ids[t]) * D + d];
}

__global__ void iota_kernel(int n, int32_t* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = i;
}

// torch: dtable.index_add_(0, ids, dout)      dtable (V, D) +=
// Tokens come sorted by id (a stable radix sort, so equal ids keep time order).
// The thread for (run start i, column d) adds the whole run of equal ids in time
// order: every sum has one owner and a fixed order, so the result is deterministic
// and equals the CPU's sequential loop.
__global__ void embedding_backward_kernel(int T, int D, int V, const int32_t* sorted_ids,
                                          const int32_t* positions, const float* dout,
                                          float* dtable) {
  const int i = blockIdx.x;  // position in the sorted order
  const int d = blockIdx.y * blockDim.x + threadIdx.x;
  if (d >= D) return;
  const int id = sorted_ids[i];
  if (i > 0 && sorted_ids[i - 1] == id) return;  // not the start of a run
  if (id < 0 || id >= V) return;                 // the host validated ids; never write out of bounds
  float acc = dtable[size_t(id) * D + d];
  for (int j = i; j < T && sorted_ids[j] == id; ++j) acc += dout[size_t(positions[j]) * D + d];
  dtable[size_t(id) * D + d] = acc;
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
  embedding_forward_kernel<<<blocks_for(n, 256), 256, 0, c.stream>>>(T, D, ids, table, out);
  BHASA_LAUNCH_CHECK("embedding_forward");
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
  void* temp = c.scratch->get(kSortTemp, temp_bytes);
  BHASA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, ids, sorted_ids, positions_in,
                                                   positions, T, 0, end_bit, c.stream));
  const int threads = D >= 256 ? 256 : ((D + 31) / 32) * 32;
  dim3 grid(T, blocks_for(D, threads));
  embedding_backward_kernel<<<grid, threads, 0, c.stream>>>(T, D, V, sorted_ids, positions, dout, dtable);
  BHASA_LAUNCH_CHECK("embedding_backward");
}

}  // namespace bhasa::cuda
