#include "krul/compress/merge_error.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "absl/strings/str_cat.h"

namespace krul {

absl::StatusOr<MergeErrors> MeasureMergeErrors(const KvCache& cache, const KvShape& shape,
                                               int begin, int end,
                                               const MergeErrorOptions& options) {
  if (auto s = shape.Validate(); !s.ok()) return s;
  if (cache.n_layers() != shape.n_layers || cache.kv_dim() != shape.kv_dim()) {
    return absl::InvalidArgumentError("the KV shape does not match the cache");
  }
  if (begin < 0 || end <= begin || end > cache.capacity()) {
    return absl::InvalidArgumentError(
        absl::StrCat("token range [", begin, ", ", end, ") is empty or outside the cache"));
  }
  if (!(options.retain_angle_degrees >= 0 && options.retain_angle_degrees <= 180)) {
    return absl::InvalidArgumentError("retain_angle_degrees is outside [0, 180]");
  }
  const int L = shape.n_layers, H = shape.n_kv_heads, d = shape.head_dim, n = end - begin;
  const size_t weights_needed = static_cast<size_t>(L) * n;
  if (!options.token_weights.empty() && options.token_weights.size() != weights_needed) {
    return absl::InvalidArgumentError(absl::StrCat("token_weights has ",
                                                   options.token_weights.size(), " entries; ",
                                                   weights_needed, " expected"));
  }
  // Per layer: weights of its tokens, or 1 where it has none.
  std::vector<double> weight(weights_needed, 1.0);
  if (!options.token_weights.empty()) {
    for (int l = 0; l < L; ++l) {
      double sum = 0;
      for (int t = 0; t < n; ++t) {
        const double w = options.token_weights[static_cast<size_t>(l) * n + t];
        if (!std::isfinite(w) || w < 0) {
          return absl::InvalidArgumentError("token_weights has a negative or non-finite value");
        }
        sum += w;
      }
      if (sum <= 0) continue;
      for (int t = 0; t < n; ++t) {
        weight[static_cast<size_t>(l) * n + t] =
            options.token_weights[static_cast<size_t>(l) * n + t];
      }
    }
  }
  // cos(W) above which a unit is merged (below it, retained).
  const double min_cos = options.retain_angle_degrees >= 180
                             ? -2.0
                             : std::cos(options.retain_angle_degrees * std::numbers::pi / 180.0);

  MergeErrors out;
  out.n_layers = L;
  const size_t LL = static_cast<size_t>(L) * L;
  out.key.assign(LL, 0.0);
  out.value.assign(LL, 0.0);
  out.retained_units.assign(LL, 0.0);
  std::vector<double> err[2] = {std::vector<double>(LL, 0.0), std::vector<double>(LL, 0.0)};
  std::vector<double> energy[2] = {std::vector<double>(LL, 0.0), std::vector<double>(LL, 0.0)};
  std::vector<double> norm2(L);
  std::vector<float> unit(static_cast<size_t>(L) * d);
  for (int tensor = 0; tensor < 2; ++tensor) {
    for (int t = 0; t < n; ++t) {
      for (int h = 0; h < H; ++h) {
        for (int l = 0; l < L; ++l) {
          const float* x = (tensor == 0 ? cache.key(l, begin + t) : cache.value(l, begin + t)) +
                           static_cast<size_t>(h) * d;
          double s = 0;
          for (int i = 0; i < d; ++i) s += static_cast<double>(x[i]) * x[i];
          norm2[l] = s;
          const double inv = s > 0 ? 1.0 / std::sqrt(s) : 0.0;
          float* u = unit.data() + static_cast<size_t>(l) * d;
          for (int i = 0; i < d; ++i) u[i] = static_cast<float>(x[i] * inv);
        }
        for (int a = 0; a < L; ++a) {
          const double ea = weight[static_cast<size_t>(a) * n + t] * norm2[a];
          const float* ua = unit.data() + static_cast<size_t>(a) * d;
          for (int b = a + 1; b < L; ++b) {
            const double eb = weight[static_cast<size_t>(b) * n + t] * norm2[b];
            const size_t ab = static_cast<size_t>(a) * L + b;
            energy[tensor][ab] += ea + eb;
            // A zero row takes its partner's direction: exact, as stored.
            if (norm2[a] == 0 || norm2[b] == 0) continue;
            const float* ub = unit.data() + static_cast<size_t>(b) * d;
            double c = 0;
            for (int i = 0; i < d; ++i) c += static_cast<double>(ua[i]) * ub[i];
            c = std::clamp(c, -1.0, 1.0);
            if (c < min_cos) {
              out.retained_units[ab] += 1;
              continue;
            }
            err[tensor][ab] += (ea + eb) * (2.0 - 2.0 * std::sqrt(0.5 * (1.0 + c)));
          }
        }
      }
    }
  }
  for (int a = 0; a < L; ++a) {
    for (int b = a + 1; b < L; ++b) {
      const size_t ab = static_cast<size_t>(a) * L + b, ba = static_cast<size_t>(b) * L + a;
      for (int tensor = 0; tensor < 2; ++tensor) {
        const double rel = energy[tensor][ab] > 0 ? err[tensor][ab] / energy[tensor][ab] : 0.0;
        std::vector<double>& to = tensor == 0 ? out.key : out.value;
        to[ab] = to[ba] = rel;
      }
      out.retained_units[ba] = out.retained_units[ab];
    }
  }
  return out;
}

}  // namespace krul
