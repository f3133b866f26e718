// Where a GPU step's time goes: with BHASA_CUDA_PROFILE=1 in the environment, the
// CUDA backend brackets every call (kernel family, GEMM shape, copy) with a pair of
// CUDA events and, when it is destroyed, prints per-op totals to stderr, sorted by
// time. Off by default: a disabled scope costs one branch. Graph captures are not
// profiled (an event recorded during capture would become a graph node). The first
// call of each op is left out: it carries one-time work (cuBLASLt's algorithm search,
// scratch growth) during which the GPU waits on the host.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

namespace bhasa::cuda {

class OpProfile {
 public:
  explicit OpProfile(cudaStream_t stream) : stream_(stream) {
    const char* env = std::getenv("BHASA_CUDA_PROFILE");
    enabled_ = env && std::string(env) != "0";
  }
  ~OpProfile() {
    if (!enabled_) return;
    flush();
    report();
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }
  bool enabled() const { return enabled_; }

  class Scope {
   public:
    Scope(OpProfile* p, int record) : p_(p), record_(record) {}
    ~Scope() {
      if (p_) p_->end(record_);
    }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    OpProfile* p_;
    int record_;
  };
  // Use as `auto s = profile.scope(name)`; name is only built when enabled (see the macro).
  int begin(std::string name) {
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    cudaStreamIsCapturing(stream_, &capturing);
    if (capturing != cudaStreamCaptureStatusNone) return -1;
    if (records_.size() >= 4096 && open_ == 0) flush();  // scopes may nest one deep (gemm > to_bf16)
    open_++;
    records_.push_back({std::move(name), event(), -1});
    cudaEventRecord(events_[records_.back().start], stream_);
    return int(records_.size()) - 1;
  }
  void end(int record) {
    if (record < 0) return;
    open_--;
    records_[record].stop = event();
    cudaEventRecord(events_[records_[record].stop], stream_);
  }

 private:
  struct Record {
    std::string name;
    int start, stop;
  };
  struct Total {
    long calls = 0;  // after the first
    double ms = 0;
    bool seen = false;
  };
  int event() {
    if (next_event_ == int(events_.size())) {
      cudaEvent_t e;
      cudaEventCreate(&e);
      events_.push_back(e);
    }
    return next_event_++;
  }
  void flush() {
    cudaStreamSynchronize(stream_);
    for (const Record& r : records_) {
      if (r.stop < 0) continue;
      float ms = 0;
      cudaEventElapsedTime(&ms, events_[r.start], events_[r.stop]);
      Total& t = totals_[r.name];
      if (!t.seen) {
        t.seen = true;
        continue;
      }
      t.calls++;
      t.ms += ms;
    }
    records_.clear();
    next_event_ = 0;
  }
  void report() const {
    std::vector<std::pair<std::string, Total>> rows(totals_.begin(), totals_.end());
    std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
    double all = 0;
    for (const auto& r : rows)
      if (r.first.rfind("  (", 0) != 0) all += r.second.ms;  // nested rows are inside others
    std::fprintf(stderr, "\nCUDA op profile (BHASA_CUDA_PROFILE; first call of each op left out): %.3f ms in all ops\n", all);
    std::fprintf(stderr, "| op | calls | total ms | ms per call | %% |\n|---|---|---|---|---|\n");
    for (const auto& [name, t] : rows)
      if (t.calls > 0)
        std::fprintf(stderr, "| %s | %ld | %.3f | %.4f | %.1f |\n", name.c_str(), t.calls, t.ms, t.ms / t.calls,
                   100.0 * t.ms / std::max(all, 1e-9));
  }

  cudaStream_t stream_;
  bool enabled_ = false;
  std::vector<cudaEvent_t> events_;
  int next_event_ = 0;
  int open_ = 0;  // scopes begun and not yet ended
  std::vector<Record> records_;
  std::map<std::string, Total> totals_;
};

// Opens a profiling scope for the rest of the enclosing block; NAME_EXPR is evaluated
// only when profiling is on.
#define BHASA_PROFILE_OP(profile, NAME_EXPR) \
  ::bhasa::cuda::OpProfile::Scope bhasa_op_scope_((profile).enabled() ? &(profile) : nullptr, \
                                                  (profile).enabled() ? (profile).begin(NAME_EXPR) : -1)

}  // namespace bhasa::cuda
