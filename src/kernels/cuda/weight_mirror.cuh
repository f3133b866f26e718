// bf16 mirrors of frozen weights (Backend::freeze_weights): decoding reads each weight
// once per token step, so its time is the weight bytes; a bf16 copy halves them. The
// model freezes its parameters where decoding starts; the mirror stays valid until the
// backend writes anywhere into the range (upload, adamw, copy, a kernel's output, ...),
// which drops it, so training after sampling never reads stale weights.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <vector>

namespace bhasa::cuda {

class WeightMirrors {
 public:
  explicit WeightMirrors(cudaStream_t stream) : stream_(stream) {}
  ~WeightMirrors();
  // torch: mirror = params[:n].to(torch.bfloat16), unless a valid mirror of exactly this
  // range exists (then a check, no work). One mirror per base pointer (one per model);
  // its buffer grows once and keeps its address, so a graph captured reading it stays valid.
  // During a stream capture nothing is converted (the decode ops then read the fp32 weights).
  void freeze(const float* params, size_t n);
  // The bf16 copy of w[0, n) when it lies inside a valid mirror, else null.
  const void* find(const float* w, size_t n) const;
  // For a kernel about to rewrite w[0, n) that also writes the new values' bf16 into the
  // copy (adamw): where w's copy lies, when w lies inside a mirror holding bf16(params)
  // everywhere (valid, or only `same` since). The mirror is then no longer read (as after
  // any write) but stays `same`, so the next freeze makes it valid without a conversion.
  // Null otherwise (the caller writes w alone and reports it by wrote()).
  void* rewriting(const float* w, size_t n);
  // The backend wrote [p, p + bytes): mirrors overlapping it are dropped.
  void wrote(const void* p, size_t bytes) {
    for (Mirror& m : mirrors_)
      if ((m.valid || m.same) && overlaps(m, p, bytes)) m.valid = m.same = false;
  }
  // p was freed: a mirror based there goes too; others inside it are dropped.
  void freed(const void* p);

 private:
  struct Mirror {
    const float* base = nullptr;
    size_t n = 0;            // floats mirrored
    void* bf16 = nullptr;    // (n) bf16, grow-once
    size_t capacity = 0;     // elements
    bool valid = false;      // read by find()
    bool same = false;       // equal to bf16(params) (valid implies same)
  };
  static bool overlaps(const Mirror& m, const void* p, size_t bytes) {
    const char* a = reinterpret_cast<const char*>(m.base);
    const char* q = static_cast<const char*>(p);
    return q < a + m.n * sizeof(float) && q + bytes > a;
  }
  cudaStream_t stream_;
  std::vector<Mirror> mirrors_;
};

}  // namespace bhasa::cuda
