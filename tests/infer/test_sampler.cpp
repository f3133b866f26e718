// Sampler modes against what they must do, and the streaming text helpers.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "infer/sampler.h"
#include "infer/text_stream.h"

using namespace bhasa;

namespace {

SamplerOptions opts(float temperature, int top_k = 0, float top_p = 1.0f, float penalty = 1.0f) {
  SamplerOptions o;
  o.temperature = temperature;
  o.top_k = top_k;
  o.top_p = top_p;
  o.repeat_penalty = penalty;
  o.seed = 42;
  return o;
}

TEST(Sampler, GreedyIsFirstArgmax) {
  Sampler s(opts(0), 5);
  float logits[5] = {0.1f, 2.0f, -1.0f, 2.0f, 1.0f};
  EXPECT_EQ(s.sample(logits, {}), 1);
}

TEST(Sampler, ChoosesOnlyWithinTheTokenizerVocabulary) {
  Sampler s(opts(0), 3);  // logits row of 5 (padded model vocab), tokenizer of 3
  float logits[5] = {0.1f, 0.2f, 0.3f, 9.0f, 9.0f};
  EXPECT_EQ(s.sample(logits, {}), 2);
}

TEST(Sampler, TopKOneAndTinyTopPAreArgmax) {
  Sampler k1(opts(5.0f, 1), 4), p(opts(5.0f, 0, 1e-6f), 4);
  for (int i = 0; i < 50; ++i) {
    float a[4] = {0.0f, 0.5f, 0.4f, -3.0f}, b[4] = {0.0f, 0.5f, 0.4f, -3.0f};
    EXPECT_EQ(k1.sample(a, {}), 1);
    EXPECT_EQ(p.sample(b, {}), 1);
  }
}

// Frequencies follow softmax(logits / T); top-k / top-p renormalise over what they keep.
TEST(Sampler, FrequenciesFollowTheDistribution) {
  const float base[4] = {1.0f, 0.0f, 2.0f, -1.0f};
  auto freq = [&](SamplerOptions o) {
    Sampler s(o, 4);
    std::vector<double> f(4, 0.0);
    const int n = 40000;
    for (int i = 0; i < n; ++i) {
      float l[4] = {base[0], base[1], base[2], base[3]};
      f[s.sample(l, {})] += 1.0 / n;
    }
    return f;
  };
  auto softmax = [&](float T, std::vector<int> keep) {
    std::vector<double> p(4, 0.0);
    double z = 0;
    for (int i : keep) z += p[i] = std::exp(base[i] / T);
    for (double& x : p) x /= z;
    return p;
  };
  auto expect_close = [](const std::vector<double>& got, const std::vector<double>& want) {
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(got[i], want[i], 0.01) << "token " << i;
  };
  expect_close(freq(opts(1.0f)), softmax(1.0f, {0, 1, 2, 3}));
  expect_close(freq(opts(0.5f)), softmax(0.5f, {0, 1, 2, 3}));
  expect_close(freq(opts(1.0f, 2)), softmax(1.0f, {2, 0}));
  // softmax(T=1) = {0.237, 0.087, 0.644, 0.032}: top-p 0.8 keeps {2, 0} (0.881 >= 0.8).
  expect_close(freq(opts(1.0f, 0, 0.8f)), softmax(1.0f, {2, 0}));
}

TEST(Sampler, SameSeedSameStreamAndRngStateRestores) {
  Sampler a(opts(1.0f), 50), b(opts(1.0f), 50);
  std::vector<float> row(50);
  for (int i = 0; i < 50; ++i) row[i] = std::sin(float(i));
  std::vector<int32_t> sa, sb;
  for (int i = 0; i < 20; ++i) {
    auto r1 = row, r2 = row;
    sa.push_back(a.sample(r1.data(), {}));
    sb.push_back(b.sample(r2.data(), {}));
  }
  EXPECT_EQ(sa, sb);
  uint64_t saved = a.rng_state();
  auto r = row;
  int32_t first = a.sample(r.data(), {});
  a.set_rng_state(saved);
  r = row;
  EXPECT_EQ(a.sample(r.data(), {}), first);
}

TEST(Sampler, RepeatPenaltyDividesPositiveAndMultipliesNegative) {
  SamplerOptions o = opts(0, 0, 1.0f, 2.0f);
  o.repeat_last_n = 2;
  Sampler s(o, 4);
  float logits[4] = {3.0f, 2.0f, -1.0f, 1.9f};
  std::vector<int32_t> history = {0, 0, 1, 2};  // window of 2: {1, 2}; token 0 is outside it
  EXPECT_EQ(s.sample(logits, history), 0);
  EXPECT_FLOAT_EQ(logits[0], 3.0f);
  EXPECT_FLOAT_EQ(logits[1], 1.0f);   // 2 / 2, once even if repeated
  EXPECT_FLOAT_EQ(logits[2], -2.0f);  // -1 * 2
  EXPECT_FLOAT_EQ(logits[3], 1.9f);
}

TEST(Sampler, RejectsAbsurdOptions) {
  auto message = [](SamplerOptions o) {
    try {
      o.validate();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message(opts(0, 0, 2.0f)).find("--top-p must be in (0, 1]"), std::string::npos);
  EXPECT_NE(message(opts(0, 0, 0.0f)).find("--top-p"), std::string::npos);
  EXPECT_NE(message(opts(-1.0f)).find("--temperature must be >= 0"), std::string::npos);
  EXPECT_NE(message(opts(1.0f, -3)).find("--top-k must be >= 0"), std::string::npos);
  EXPECT_NE(message(opts(1.0f, 0, 1.0f, 0.0f)).find("--repeat-penalty"), std::string::npos);
  EXPECT_EQ(message(opts(0.7f, 40, 0.9f, 1.1f)), "no error");
}

TEST(TextStream, HoldsSplitUtf8Characters) {
  Utf8Assembler u;
  const std::string e_acute = "\xC3\xA9", euro = "\xE2\x82\xAC";
  EXPECT_EQ(u.push("a\xC3"), "a");
  EXPECT_EQ(u.push("\xA9"), e_acute);
  EXPECT_EQ(u.push("\xE2"), "");
  EXPECT_EQ(u.push("\x82"), "");
  EXPECT_EQ(u.push("\xAC" "b"), euro + "b");
  EXPECT_EQ(u.push("\xF0\x9F"), "");
  EXPECT_EQ(u.flush(), "\xEF\xBF\xBD");          // an unfinished character at the end: U+FFFD
  EXPECT_EQ(u.push("\xFF" "c"), "\xEF\xBF\xBD" "c");  // a byte that is never UTF-8
}

TEST(TextStream, StopStringsAcrossPiecesAreCutAndNotPrinted) {
  StopMatcher m({"\n\n", "END"});
  bool stopped = false;
  EXPECT_EQ(m.push("hello\n", stopped), "hello");  // "\n" may begin "\n\n": held
  EXPECT_FALSE(stopped);
  EXPECT_EQ(m.push("world E", stopped), "\nworld ");
  EXPECT_FALSE(stopped);
  EXPECT_EQ(m.push("NDING", stopped), "");
  EXPECT_TRUE(stopped);

  StopMatcher n({"\n\n"});
  EXPECT_EQ(n.push("ab\n", stopped), "ab");
  EXPECT_EQ(n.push("\ncd", stopped), "");
  EXPECT_TRUE(stopped);

  StopMatcher none({"xyz"});
  EXPECT_EQ(none.push("abx", stopped), "ab");
  EXPECT_EQ(none.flush(), "x");
}

}  // namespace
