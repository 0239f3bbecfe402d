#include "krul/compress/estimate_codec.h"

#include <bit>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "krul/base/byte_order.h"

namespace krul {
namespace {

constexpr char kMagic[4] = {'K', 'R', 'S', 'E'};
constexpr uint16_t kVersion = 1;
constexpr int kMaxLayers = 4096;
// magic, version, flags, n_layers, edge_fraction, rows, 3 x i64, sampled.
constexpr size_t kHeaderBytes = 4 + 2 + 2 + 4 + 8 + 8 + 3 * 8 + 1;
constexpr size_t kChecksumBytes = 8;

// FNV-1a, 64 bit: against torn or flipped bytes (no cryptographic claim).
uint64_t Fnv1a64(const char* data, size_t n) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; ++i) {
    h ^= static_cast<uint8_t>(data[i]);
    h *= 0x100000001b3ULL;
  }
  return h;
}

void AppendF64(std::string& out, double v) { internal::Append64(out, std::bit_cast<uint64_t>(v)); }

bool WellFormed(const SimilarityEstimate& e) {
  if (e.n_layers < 1 || e.n_layers > kMaxLayers) return false;
  const size_t l = e.n_layers;
  return e.distance.size() == l * l && e.first_mass_sum.size() == l &&
         e.last_mass_sum.size() == l && e.mass_weight.size() == l &&
         (e.prefill_distance.empty() || e.prefill_distance.size() == l * l) &&
         (e.decode_distance.empty() || e.decode_distance.size() == l * l);
}

}  // namespace

absl::StatusOr<std::string> SerializeEstimate(const SimilarityEstimate& e) {
  if (!WellFormed(e)) return absl::InvalidArgumentError("malformed similarity estimate");
  const int L = e.n_layers;
  std::string out(kMagic, 4);
  internal::Append16(out, kVersion);
  internal::Append16(out, 0);
  internal::Append32(out, static_cast<uint32_t>(L));
  AppendF64(out, e.edge_fraction);
  AppendF64(out, e.rows_represented);
  internal::Append64(out, static_cast<uint64_t>(e.prefill_tokens));
  internal::Append64(out, static_cast<uint64_t>(e.decode_tokens));
  internal::Append64(out, static_cast<uint64_t>(e.rows_compared));
  out.push_back(e.sampled ? 1 : 0);
  // An estimate built by hand may lack the split: all of it is then prefill.
  const std::vector<double>& prefill = e.prefill_distance.empty() ? e.distance : e.prefill_distance;
  for (int a = 0; a < L; ++a) {
    for (int b = a + 1; b < L; ++b) AppendF64(out, prefill[static_cast<size_t>(a) * L + b]);
  }
  for (int a = 0; a < L; ++a) {
    for (int b = a + 1; b < L; ++b) {
      AppendF64(
          out, e.decode_distance.empty() ? 0.0 : e.decode_distance[static_cast<size_t>(a) * L + b]);
    }
  }
  for (double v : e.first_mass_sum) AppendF64(out, v);
  for (double v : e.last_mass_sum) AppendF64(out, v);
  for (double v : e.mass_weight) AppendF64(out, v);
  internal::Append64(out, Fnv1a64(out.data(), out.size()));
  return out;
}

absl::StatusOr<SimilarityEstimate> ParseEstimate(std::string_view bytes) {
  if (bytes.size() < kHeaderBytes + kChecksumBytes || std::memcmp(bytes.data(), kMagic, 4) != 0) {
    return absl::DataLossError("not a similarity estimate (short or bad magic)");
  }
  const char* p = bytes.data();
  const size_t body = bytes.size() - kChecksumBytes;
  if (internal::Get64(p + body) != Fnv1a64(p, body)) {
    return absl::DataLossError("similarity estimate checksum mismatch");
  }
  const uint16_t version = internal::Get16(p + 4);
  const uint16_t flags = internal::Get16(p + 6);
  if (version != kVersion || flags != 0) {
    return absl::UnimplementedError(
        absl::StrCat("similarity estimate version ", version, " flags ", flags));
  }
  const uint32_t L = internal::Get32(p + 8);
  if (L < 1 || L > kMaxLayers) {
    return absl::InvalidArgumentError(absl::StrCat("estimate n_layers ", L));
  }
  const size_t tri = static_cast<size_t>(L) * (L - 1) / 2;
  const size_t expected =
      kHeaderBytes + 8 * (2 * tri + 3 * static_cast<size_t>(L)) + kChecksumBytes;
  if (bytes.size() != expected) {
    return absl::DataLossError(
        absl::StrCat("similarity estimate of ", bytes.size(), " bytes; ", expected, " expected"));
  }
  size_t pos = 12;
  auto f64 = [&] {
    const double v = std::bit_cast<double>(internal::Get64(p + pos));
    pos += 8;
    return v;
  };
  auto i64 = [&] {
    const auto v = static_cast<int64_t>(internal::Get64(p + pos));
    pos += 8;
    return v;
  };
  const double edge_fraction = f64();
  if (!std::isfinite(edge_fraction) || edge_fraction <= 0 || edge_fraction > 0.5) {
    return absl::InvalidArgumentError("estimate edge_fraction is outside (0, 0.5]");
  }
  SimilarityEstimate e = SimilarityEstimate::Empty(static_cast<int>(L), edge_fraction);
  e.rows_represented = f64();
  e.prefill_tokens = i64();
  e.decode_tokens = i64();
  e.rows_compared = i64();
  e.sampled = p[pos++] != 0;
  bool ok = std::isfinite(e.rows_represented) && e.rows_represented >= 0 && e.prefill_tokens >= 0 &&
            e.decode_tokens >= 0 && e.rows_compared >= 0;
  auto read_tri = [&](std::vector<double>& to) {
    for (uint32_t a = 0; a < L; ++a) {
      for (uint32_t b = a + 1; b < L; ++b) {
        const double v = f64();
        ok = ok && std::isfinite(v) && v >= 0;
        to[static_cast<size_t>(a) * L + b] = to[static_cast<size_t>(b) * L + a] = v;
      }
    }
  };
  read_tri(e.prefill_distance);
  read_tri(e.decode_distance);
  for (std::vector<double>* v : {&e.first_mass_sum, &e.last_mass_sum, &e.mass_weight}) {
    for (double& x : *v) {
      x = f64();
      ok = ok && std::isfinite(x) && x >= 0;
    }
  }
  if (!ok) return absl::InvalidArgumentError("estimate has a negative or non-finite statistic");
  for (size_t i = 0; i < e.distance.size(); ++i) {
    e.distance[i] = e.prefill_distance[i] + e.decode_distance[i];
  }
  return e;
}

absl::StatusOr<SimilarityEstimate> CarryEstimate(const SimilarityEstimate& carried,
                                                 const SimilarityEstimate& turn, double decay) {
  if (!(decay >= 0 && decay <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("decay ", decay, " is outside [0, 1]"));
  }
  if (!WellFormed(carried) || !WellFormed(turn)) {
    return absl::InvalidArgumentError("malformed similarity estimate");
  }
  if (carried.n_layers != turn.n_layers || carried.edge_fraction != turn.edge_fraction) {
    return absl::InvalidArgumentError(absl::StrCat("cannot carry an estimate of ", carried.n_layers,
                                                   " layers into one of ", turn.n_layers));
  }
  SimilarityEstimate out = carried;
  auto scale = [decay](std::vector<double>& v) {
    for (double& x : v) x *= decay;
  };
  scale(out.distance);
  scale(out.prefill_distance);
  scale(out.decode_distance);
  scale(out.first_mass_sum);
  scale(out.last_mass_sum);
  scale(out.mass_weight);
  out.rows_represented *= decay;
  if (auto s = out.Merge(turn); !s.ok()) return s;
  return out;
}

}  // namespace krul
