// Each CPU operation against a naive double-precision computation.
#include <cmath>
#include <complex>
#include <random>
#include <vector>

#include "cpu_ops.h"
#include "gtest/gtest.h"
#include "krul/base/thread_pool.h"
#include "matmul.h"

namespace krul::internal {
namespace {

std::vector<float> RandomVector(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

TEST(CpuOpsTest, RmsNormMatchesDefinition) {
  const int n = 77;
  std::vector<float> x = RandomVector(n, 1, 3.0f), w = RandomVector(n, 2), out(n);
  RmsNorm(out.data(), x.data(), w.data(), n, 1e-5f);
  double ms = 0;
  for (float v : x) ms += static_cast<double>(v) * v;
  ms /= n;
  for (int i = 0; i < n; ++i) EXPECT_NEAR(out[i], w[i] * x[i] / std::sqrt(ms + 1e-5), 1e-5);
  RmsNorm(x.data(), x.data(), w.data(), n, 1e-5f);  // in place
  for (int i = 0; i < n; ++i) EXPECT_FLOAT_EQ(x[i], out[i]);
}

TEST(CpuOpsTest, RopeIsAComplexRotationPerAdjacentPair) {
  const int heads = 3, head_size = 8, pos = 17;
  const double theta = 10000.0;
  for (int rotary : {8, 4}) {
    std::vector<float> v = RandomVector(heads * head_size, 3), original = v;
    std::vector<float> cos_row(rotary / 2), sin_row(rotary / 2);
    for (int i = 0; i < rotary / 2; ++i) {
      double angle = pos * std::pow(theta, -2.0 * i / rotary);
      cos_row[i] = static_cast<float>(std::cos(angle));
      sin_row[i] = static_cast<float>(std::sin(angle));
    }
    ApplyRope(v.data(), heads, head_size, rotary, cos_row.data(), sin_row.data());
    for (int h = 0; h < heads; ++h) {
      for (int i = 0; i < head_size / 2; ++i) {
        std::complex<double> z(original[h * head_size + 2 * i],
                               original[h * head_size + 2 * i + 1]);
        if (i < rotary / 2) z *= std::polar(1.0, pos * std::pow(theta, -2.0 * i / rotary));
        EXPECT_NEAR(v[h * head_size + 2 * i], z.real(), 1e-5);
        EXPECT_NEAR(v[h * head_size + 2 * i + 1], z.imag(), 1e-5);
      }
    }
  }
}

TEST(CpuOpsTest, SoftmaxMatchesDefinitionAndSurvivesLargeLogits) {
  std::vector<float> x = {1000.0f, 999.0f, -5.0f, 0.0f};
  std::vector<float> y = x;
  Softmax(y.data(), 4);
  double denom = 0;
  for (float v : x) denom += std::exp(static_cast<double>(v) - 1000.0);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(y[i], std::exp(x[i] - 1000.0) / denom, 1e-6);
}

TEST(CpuOpsTest, SwiGluMatchesDefinition) {
  std::vector<float> gate = RandomVector(50, 4, 4.0f), up = RandomVector(50, 5), out(50);
  SwiGlu(out.data(), gate.data(), up.data(), 50);
  for (int i = 0; i < 50; ++i) {
    double g = gate[i];
    EXPECT_NEAR(out[i], g / (1.0 + std::exp(-g)) * up[i], 1e-5);
  }
}

// Odd shapes exercise every remainder path of the tiled kernel.
TEST(MatMulTest, MatchesDoublePrecisionForOddShapes) {
  ThreadPool pool(2);
  struct Shape {
    int n, in, out;
  };
  for (Shape s : {Shape{1, 64, 64}, Shape{1, 13, 7}, Shape{3, 9, 5}, Shape{5, 100, 37},
                  Shape{67, 72, 130}, Shape{130, 17, 19}}) {
    SCOPED_TRACE(testing::Message() << s.n << "x" << s.in << " * " << s.out);
    std::vector<float> x = RandomVector(static_cast<size_t>(s.n) * s.in, 6);
    std::vector<float> w = RandomVector(static_cast<size_t>(s.out) * s.in, 7);
    std::vector<float> y(static_cast<size_t>(s.n) * s.out), y_naive(y.size());
    MatMul(pool, x.data(), s.n, s.in, w.data(), s.out, y.data());
    NaiveMatMul(pool, x.data(), s.n, s.in, w.data(), s.out, y_naive.data());
    for (int t = 0; t < s.n; ++t) {
      for (int r = 0; r < s.out; ++r) {
        double want = 0;
        for (int i = 0; i < s.in; ++i)
          want += static_cast<double>(x[t * s.in + i]) * w[r * s.in + i];
        ASSERT_NEAR(y[t * s.out + r], want, 1e-4 * std::sqrt(static_cast<double>(s.in)));
        ASSERT_NEAR(y_naive[t * s.out + r], want, 1e-4 * std::sqrt(static_cast<double>(s.in)));
      }
    }
  }
}

}  // namespace
}  // namespace krul::internal
