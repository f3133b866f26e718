// Elementwise math that GCC can vectorize. A call into libm (expf, log1pf) stops
// auto-vectorization, and exp is the cost of the selective scan (one per B*L*E*N),
// so the float versions here are branch-free polynomials. Selects go through
// select_() (bit masks): under GCC's default -ftrapping-math a `c ? a : b` on a
// computed float stays a branch, which blocks vectorization. The double versions call
// libm: they exist so that tests can run the very same kernels in float64.
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace bhasa::cpu {

// c ? a : b, as integer bit operations that GCC vectorizes.
inline float select_(bool c, float a, float b) {
  const int32_t mask = -static_cast<int32_t>(c);
  return std::bit_cast<float>((std::bit_cast<int32_t>(a) & mask) |
                              (std::bit_cast<int32_t>(b) & ~mask));
}

// exp(x) in float, relative error < 2e-7. Cody-Waite range reduction x = k ln2 + r
// with |r| <= ln2/2, Cephes' degree-6 polynomial for e^r, and 2^k assembled from
// exponent bits. x is clamped to [-88, 88]: at the bottom k = -127 makes 2^k's bits
// all zero, so results that would be subnormal (x < -87.7) come out exactly 0 (no
// slow subnormal arithmetic downstream); above 88 it saturates at ~1.65e38.
inline float fast_expf(float x) {
  x = select_(x > 88.0f, 88.0f, x);
  x = select_(x < -88.0f, -88.0f, x);
  // Adding 1.5 * 2^23 rounds to the nearest integer (round-to-nearest mode).
  const float shifter = 12582912.0f;
  const float k = (x * 1.44269504088896341f + shifter) - shifter;
  float r = x - k * 0.693359375f;  // ln2 split in a part exact in float ...
  r = r - k * -2.12194440e-4f;     // ... and the remainder
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float two_k = std::bit_cast<float>((static_cast<int32_t>(k) + 127) << 23);
  return p * two_k;
}

// log(x) for positive normal float x (Cephes logf), relative error ~1e-7.
inline float fast_logf(float x) {
  const int32_t bits = std::bit_cast<int32_t>(x);
  const int32_t mantissa = bits & 0x007fffff;
  // x = m * 2^e with m in [sqrt(1/2), sqrt(2)) so the polynomial's argument stays
  // small: mantissas above sqrt(2)'s get exponent 2^-1 (m in [0.707, 1)) and e + 1.
  const int32_t big = mantissa > 0x003504f3 ? 1 : 0;
  const float e = static_cast<float>((bits >> 23) - 127 + big);
  const float m = std::bit_cast<float>(mantissa | ((127 - big) << 23));
  const float f = m - 1.0f;
  const float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return f + y + 0.693359375f * e;
}

// log1p(y) for y >= 0. Goldberg's trick: u = 1 + y rounds, but u - 1 is exact, and
// log(u) * y / (u - 1) cancels the rounding of u, so small y keep full precision.
inline float fast_log1pf(float y) {
  const float u = 1.0f + y;
  const float d = u - 1.0f;
  // d == 0: y is below half an ulp of 1, and log1p(y) = y to float precision.
  return select_(d == 0.0f, y, fast_logf(u) * (y / select_(d == 0.0f, 1.0f, d)));
}

template <class T>
inline T exp_(T x) {
  if constexpr (std::is_same_v<T, float>) return fast_expf(x);
  else return std::exp(x);
}

// torch: torch.sigmoid(x)
template <class T>
inline T sigmoid_(T x) {
  return T(1) / (T(1) + exp_(-x));
}

// torch: F.softplus(x) (threshold 20: above it softplus(x) == x in float)
template <class T>
inline T softplus_(T x) {
  if constexpr (std::is_same_v<T, float>) {
    const float sp = fast_log1pf(fast_expf(select_(x > 20.0f, 20.0f, x)));
    return select_(x > 20.0f, x, sp);
  } else {
    return x > T(20) ? x : std::log1p(std::exp(x));
  }
}

}  // namespace bhasa::cpu
