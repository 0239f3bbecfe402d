// krul-bench-matmul: Google Benchmark micro-benchmarks of the engine's matrix
// product (tiled, vectorized) next to the one-dot-product-at-a-time baseline,
// on the projection shapes of stories110M (dim 768, hidden 2048).
//
//   build/bin/krul-bench-matmul [--benchmark_filter=...]
//
// Items/s is multiply-adds per second; compare a MatMul row with the
// NaiveMatMul row of the same arguments (tokens, in, out).
#include <random>
#include <vector>

#include "benchmark/benchmark.h"
#include "krul/base/thread_pool.h"
#include "matmul.h"

namespace {

void RunMatMul(benchmark::State& state, bool naive) {
  const int n = static_cast<int>(state.range(0));
  const int in = static_cast<int>(state.range(1));
  const int out = static_cast<int>(state.range(2));
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<float> x(static_cast<size_t>(n) * in), w(static_cast<size_t>(out) * in),
      y(static_cast<size_t>(n) * out);
  for (float& v : x) v = dist(rng);
  for (float& v : w) v = dist(rng);
  static krul::ThreadPool pool(0);
  for (auto _ : state) {
    if (naive) {
      krul::internal::NaiveMatMul(pool, x.data(), n, in, w.data(), out, y.data());
    } else {
      krul::internal::MatMul(pool, x.data(), n, in, w.data(), out, y.data());
    }
    benchmark::DoNotOptimize(y.data());
  }
  state.SetItemsProcessed(state.iterations() * int64_t{n} * in * out);
}

void BM_MatMul(benchmark::State& state) { RunMatMul(state, false); }
void BM_NaiveMatMul(benchmark::State& state) { RunMatMul(state, true); }

// (tokens, in, out): decode (1 token) and prefill (64 tokens) of wq and w1.
#define KRUL_MATMUL_SHAPES \
  Args({1, 768, 768})->Args({1, 768, 2048})->Args({64, 768, 768})->Args({64, 768, 2048})

BENCHMARK(BM_MatMul)->KRUL_MATMUL_SHAPES->UseRealTime();
BENCHMARK(BM_NaiveMatMul)->KRUL_MATMUL_SHAPES->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
