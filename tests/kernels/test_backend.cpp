// The CPU backend's memory calls and the device factory.
#include <gtest/gtest.h>

#include "core/error.h"
#include "kernels/kernels.h"

using namespace bhasa;

TEST(Backend, CpuMemoryIsZeroedAndCopies) {
  auto be = make_backend("cpu");
  EXPECT_EQ(be->name(), "cpu");
  float* a = be->alloc(37);
  for (int i = 0; i < 37; ++i) ASSERT_EQ(a[i], 0.f);
  const float src[3] = {1.f, 2.f, 3.f};
  be->upload(a, src, 3);
  float back[3];
  be->download(back, a, 3);
  EXPECT_EQ(back[2], 3.f);
  be->zero(a, 3);
  EXPECT_EQ(a[1], 0.f);
  int32_t* ids = be->alloc_i32(4);
  const int32_t isrc[2] = {7, 9};
  be->upload_i32(ids, isrc, 2);
  EXPECT_EQ(ids[1], 9);
  be->free(a);
  be->free(ids);
  be->free(be->alloc(0));
}

TEST(Backend, UnknownDeviceThrows) {
  EXPECT_THROW(make_backend("tpu"), Error);
#ifndef BHASA_CUDA
  try {
    make_backend("cuda");
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("without CUDA"), std::string::npos);
  }
#endif
}
