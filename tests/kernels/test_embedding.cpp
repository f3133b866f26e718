// Embedding lookup and scatter-add, with repeated ids.
#include <gtest/gtest.h>

#include "core/error.h"
#include "kernel_test_util.h"
#include "kernels/kernels.h"

using namespace bhasa;
using namespace bhasa::test;

TEST(Embedding, ForwardGathersRows) {
  const int V = 6, D = 70, T = 5;
  const std::vector<int32_t> ids = {3, 0, 3, 5, 1};
  const auto table = to_float(randn(V * D, 1));
  std::vector<float> out(T * D);
  make_cpu_backend()->embedding_forward(T, D, ids.data(), table.data(), out.data());
  for (int t = 0; t < T; ++t)
    for (int d = 0; d < D; ++d) ASSERT_EQ(out[t * D + d], table[ids[t] * D + d]);
}

TEST(Embedding, BackwardMatchesFiniteDifferencesAndAccumulates) {
  const int V = 6, D = 70, T = 5;
  const std::vector<int32_t> ids = {3, 0, 3, 5, 1};  // id 3 twice
  Vec table = randn(V * D, 2);
  const Vec G = randn(T * D, 3);
  auto loss = [&] {
    Vec out(T * D);
    cpu::embedding_forward<double>(T, D, ids.data(), table.data(), out.data());
    return dot(out.data(), G.data(), G.size());
  };
  Vec dtable(V * D, 0.5);
  cpu::embedding_backward<double>(T, D, V, ids.data(), G.data(), dtable.data());
  for (auto& x : dtable) x -= 0.5;
  EXPECT_LT(rel_err(dtable, numeric_grad(table, loss)), 1e-6);
  // float through the backend equals the template
  auto Gf = to_float(G);
  std::vector<float> a(V * D, 0.f), b(V * D, 0.f);
  cpu::embedding_backward<float>(T, D, V, ids.data(), Gf.data(), a.data());
  make_cpu_backend()->embedding_backward(T, D, V, ids.data(), Gf.data(), b.data());
  EXPECT_EQ(a, b);
}

TEST(Embedding, BackwardRejectsOutOfRangeIds) {
  const std::vector<int32_t> ids = {1, 6};
  std::vector<float> g(2 * 4, 1.f), dtable(6 * 4, 0.f);
  EXPECT_THROW(cpu::embedding_backward<float>(2, 4, 6, ids.data(), g.data(), dtable.data()), Error);
}
