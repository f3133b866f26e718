// A kernel timeline without nsys: a CUPTI activity tracer loaded into any CUDA program
// through CUDA_INJECTION64_PATH. At exit it prints, for the last TRACE_TAIL (fraction,
// default 0.5) of the run's GPU timeline: the busy time (union of kernel, copy and set
// intervals), the gaps between consecutive activities by size, the kernels by total
// time, and the kernel pairs whose gaps cost the most. TRACE_STEP=<kernel name part>
// divides by that kernel's count (one per training step, e.g. adamw_vec); TRACE_API=1
// adds the host's CUDA runtime calls. Build and use:
//   g++ -O2 -shared -fPIC -I/usr/local/cuda/include bench/cuda_lab/trace_inject.cpp
//       -L/usr/local/cuda/lib64 -lcupti -o trace_inject.so
//   CUDA_INJECTION64_PATH=$PWD/trace_inject.so TRACE_STEP=adamw_vec bhasa bench train ... --steps 30
#include <cupti.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace {
struct Act {
  uint64_t start, end;
  std::string name;
};
using Table = std::map<std::string, std::pair<int, double>>;  // name -> (count, total us)
std::mutex mu;
std::vector<Act> acts;
std::vector<Act> api;  // host-side runtime API calls (CPU timestamps, same clock as the GPU's)

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *size = 16 << 20;
  *buffer = static_cast<uint8_t*>(aligned_alloc(8, *size));
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* r = nullptr;
  std::lock_guard<std::mutex> lock(mu);
  while (cuptiActivityGetNextRecord(buffer, valid, &r) == CUPTI_SUCCESS) {
    if (r->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || r->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
      auto* k = reinterpret_cast<CUpti_ActivityKernel10*>(r);
      acts.push_back({k->start, k->end, k->name ? k->name : "?"});
    } else if (r->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      auto* m = reinterpret_cast<CUpti_ActivityMemcpy6*>(r);
      acts.push_back({m->start, m->end, "[memcpy " + std::to_string(m->bytes) + " B]"});
    } else if (r->kind == CUPTI_ACTIVITY_KIND_RUNTIME) {
      auto* a = reinterpret_cast<CUpti_ActivityAPI*>(r);
      const char* name = nullptr;
      cuptiGetCallbackName(CUPTI_CB_DOMAIN_RUNTIME_API, a->cbid, &name);
      api.push_back({a->start, a->end, name ? name : "?"});
    } else if (r->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
      auto* m = reinterpret_cast<CUpti_ActivityMemset4*>(r);
      acts.push_back({m->start, m->end, "[memset]"});
    }
  }
  free(buffer);
}

std::string short_name(const std::string& s) {
  // drop the anonymous-namespace prefix so that the kernel's own name shows
  std::string n = s.substr(0, s.find('('));
  const size_t anon = n.find("GLOBAL__N__");
  if (anon != std::string::npos) {
    size_t k = n.find('_', anon + 11);  // past the hash
    for (int skip = 0; skip < 3 && k != std::string::npos; skip++) k = n.find('_', k + 1);
    if (k != std::string::npos) n = n.substr(k + 1);
  }
  if (n.size() > 60) n = n.substr(0, 60);
  return n;
}

void report() {
  cuptiActivityFlushAll(1);
  std::lock_guard<std::mutex> lock(mu);
  if (acts.empty()) return;
  std::sort(acts.begin(), acts.end(), [](const Act& a, const Act& b) { return a.start < b.start; });
  const double tail = getenv("TRACE_TAIL") ? atof(getenv("TRACE_TAIL")) : 0.5;
  uint64_t t_end = 0;
  for (auto& a : acts) t_end = std::max(t_end, a.end);
  const uint64_t t0 = t_end - uint64_t((t_end - acts.front().start) * tail);
  Table by_kernel;  // name -> (count, us)
  Table by_gap;     // "prev -> next" -> (count, us of gap)
  Table big_gap;    // the same for gaps over 100 us
  const double edges[] = {1, 2, 5, 10, 20, 100, 1e30};
  double gap_us[7] = {}, busy = 0;
  int gap_n[7] = {};
  uint64_t reach = 0, first = 0;
  std::string prev;
  for (auto& a : acts) {
    if (a.start < t0) continue;
    if (!first) first = a.start, reach = a.start;
    auto& k = by_kernel[short_name(a.name)];
    k.first++, k.second += (a.end - a.start) / 1e3;
    if (a.start > reach) {
      const double g = (a.start - reach) / 1e3;
      int b = 0;
      while (g > edges[b]) b++;
      gap_us[b] += g, gap_n[b]++;
      auto& p = (g <= 100 ? by_gap : big_gap)[short_name(prev).substr(0, 40) + " -> " + short_name(a.name).substr(0, 40)];
      p.first++, p.second += g;
    }
    busy += (std::max(a.end, reach) - std::max(a.start, reach)) / 1e3;
    reach = std::max(reach, a.end);
    prev = a.name;
  }
  // What each kernel adds to a chain (PDL kernels start early and wait, so their durations
  // overlap): its end minus the previous activity's end, in the order they end.
  Table by_inc;
  {
    std::vector<const Act*> ends;
    for (auto& a : acts)
      if (a.start >= t0) ends.push_back(&a);
    std::sort(ends.begin(), ends.end(), [](const Act* a, const Act* b) { return a->end < b->end; });
    for (size_t i = 1; i < ends.size(); i++) {
      auto& v = by_inc[short_name(ends[i]->name)];
      v.first++, v.second += (ends[i]->end - ends[i - 1]->end) / 1e3;
    }
  }
  const double window = (t_end - first) / 1e3;
  // TRACE_PER: divide the totals by this many (e.g. the training steps in the window).
  // TRACE_STEP=name: per occurrence of the kernel whose name holds it (one per step).
  double per = getenv("TRACE_PER") ? atof(getenv("TRACE_PER")) : 1.0;
  if (const char* step = getenv("TRACE_STEP")) {
    per = 0;
    for (auto& [n, v] : by_kernel)
      if (n.find(step) != std::string::npos) per += v.first;
    if (per == 0) per = 1;
  }
  busy /= per;
  for (auto& g : gap_us) g /= per;
  for (auto& [n, v] : by_kernel) v.second /= per;
  for (auto& [n, v] : by_gap) v.second /= per;
  for (auto& [n, v] : by_inc) v.second /= per;
  for (auto& [n, v] : big_gap) v.second /= per;
  FILE* o = stderr;
  fprintf(o, "\n[trace] window %.1f ms (last %.0f%%); per 1/%g of it: busy %.2f ms, idle %.2f ms\n", window / 1e3,
          tail * 100, per, busy / 1e3, (window / per - busy) / 1e3);
  const char* labels[] = {"<=1us", "1-2us", "2-5us", "5-10us", "10-20us", "20-100us", ">100us"};
  for (int b = 0; b < 7; b++) fprintf(o, "[trace] gaps %-8s n %6d  total %8.1f us\n", labels[b], gap_n[b], gap_us[b]);
  // The largest rows of a (count, total us) table, totals per 1/per.
  auto print_top = [&](const Table& t, size_t rows, const char* title) {
    std::vector<std::pair<double, std::string>> order;
    for (auto& [n, v] : t) order.push_back({v.second, n});
    std::sort(order.rbegin(), order.rend());
    fprintf(o, "[trace] %s (us, count, us each; per 1/%g):\n", title, per);
    for (size_t i = 0; i < order.size() && i < rows; i++) {
      const auto& v = t.at(order[i].second);
      fprintf(o, "[trace] %10.1f %7.1f %8.2f  %s\n", v.second, v.first / per, v.second * per / v.first,
              order[i].second.c_str());
    }
  };
  print_top(by_kernel, 45, "kernels by total time");
  print_top(by_inc, 20, "kernels by what they add to the chain (end - previous end)");
  print_top(by_gap, 30, "gaps <= 100 us by kernel pair");
  print_top(big_gap, 12, "gaps > 100 us by kernel pair");
  Table by_api;
  for (auto& a : api) {
    if (a.start < first) continue;
    auto& v = by_api[a.name];
    v.first++, v.second += (a.end - a.start) / 1e3 / per;
  }
  print_top(by_api, 15, "host runtime API calls by total time");
}
}  // namespace

extern "C" int InitializeInjection(void) {
  cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET);
  if (getenv("TRACE_API")) cuptiActivityEnable(CUPTI_ACTIVITY_KIND_RUNTIME);
  atexit(report);
  return 1;
}
