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

// GEMM-operand activations (Operand): fp32 on the CPU; offsets count elements of the
// dtype; a bf16 Operand reaching a CPU kernel is an error, not a silent misread.
TEST(Backend, CpuOperandsAreFp32) {
  auto be = make_backend("cpu");
  EXPECT_EQ(be->operand_dtype(), Dtype::f32);
  Operand o = be->alloc_operand(10, Dtype::f32);
  EXPECT_EQ(static_cast<char*>((o + 3).p) - static_cast<char*>(o.p), 12);
  Operand h = be->alloc_operand(10, Dtype::bf16);
  EXPECT_EQ(static_cast<char*>((h + 3).p) - static_cast<char*>(h.p), 6);
  EXPECT_EQ(ConstOperand(h + 3).dtype, Dtype::bf16);
  EXPECT_NO_THROW(o.f32());
  EXPECT_THROW(h.f32(), Error);
  float x[4] = {1, 2, 3, 4}, w[4] = {1, 1, 1, 1}, rstd[1];
  EXPECT_THROW(be->norm_forward(1, 4, true, 1e-5f, x, w, nullptr, h, nullptr, rstd), Error);
  EXPECT_THROW(be->gemm(false, false, 1, 1, 1, h, 1, x, 1, 0.f, x, 1), Error);
  be->free(o.p);
  be->free(h.p);
}
