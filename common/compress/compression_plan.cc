#include "krul/compress/compression_plan.h"

#include <bit>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "krul/base/byte_order.h"

namespace krul {
namespace {

constexpr char kMagic[4] = {'K', 'R', 'P', 'L'};
constexpr uint16_t kVersion = 1;
constexpr int kMaxLayers = 4096;
// magic, version, flags, n_layers, 4 doubles, n_pairs.
constexpr size_t kFixedHeaderBytes = 4 + 2 + 2 + 4 + 4 * 8 + 4;
constexpr size_t kPairBytes = 4 + 4 + 8;
constexpr size_t kChecksumBytes = 8;

// FNV-1a, 64 bit: a checksum against torn or flipped bytes in a small
// record (no cryptographic claim). Kept local so krul_core needs only Abseil.
uint64_t Fnv1a64(const uint8_t* data, size_t n) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; ++i) {
    h ^= data[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

class Writer {
 public:
  void Bytes(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out_.append(reinterpret_cast<const char*>(b), n);
  }
  void U16(uint16_t v) { Le(v, 2); }
  void U32(uint32_t v) { Le(v, 4); }
  void U64(uint64_t v) { Le(v, 8); }
  void F64(double v) { U64(std::bit_cast<uint64_t>(v)); }
  std::string& out() { return out_; }

 private:
  void Le(uint64_t v, int n) { internal::AppendLittleEndian(out_, v, n); }
  std::string out_;
};

class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  bool Has(size_t n) const { return in_.size() - pos_ >= n; }
  uint64_t Le(int n) {
    const uint64_t v = internal::GetLittleEndian(in_.data() + pos_, n);
    pos_ += n;
    return v;
  }
  uint16_t U16() { return static_cast<uint16_t>(Le(2)); }
  uint32_t U32() { return static_cast<uint32_t>(Le(4)); }
  double F64() { return std::bit_cast<double>(Le(8)); }
  const char* Take(size_t n) {
    const char* p = in_.data() + pos_;
    pos_ += n;
    return p;
  }
  size_t pos() const { return pos_; }

 private:
  std::string_view in_;
  size_t pos_ = 0;
};

}  // namespace

double CompressionPlan::ratio() const {
  const int stored = stored_layers();
  if (n_layers <= 0 || stored <= 0) return 1.0;
  return static_cast<double>(n_layers) / stored;
}

int CompressionPlan::PartnerOf(int layer) const {
  for (const LayerPair& p : pairs) {
    if (p.first == layer) return p.second;
    if (p.second == layer) return p.first;
  }
  return -1;
}

CompressionPlan CompressionPlan::Uncompressed(int n_layers) {
  CompressionPlan plan;
  plan.n_layers = n_layers;
  plan.input_sensitive.assign(n_layers > 0 ? n_layers : 0, 0);
  return plan;
}

absl::Status ValidatePlan(const CompressionPlan& plan) {
  if (plan.n_layers < 1 || plan.n_layers > kMaxLayers) {
    return absl::InvalidArgumentError(
        absl::StrCat("plan n_layers ", plan.n_layers, " is outside [1, ", kMaxLayers, "]"));
  }
  if (plan.input_sensitive.size() != static_cast<size_t>(plan.n_layers)) {
    return absl::InvalidArgumentError(absl::StrCat("plan input_sensitive has ",
                                                   plan.input_sensitive.size(), " entries for ",
                                                   plan.n_layers, " layers"));
  }
  for (int l = 0; l < plan.n_layers; ++l) {
    if (plan.input_sensitive[l] > 1) {
      return absl::InvalidArgumentError(absl::StrCat("plan input_sensitive[", l, "] is not 0/1"));
    }
  }
  if (!std::isfinite(plan.target_ratio) || plan.target_ratio < 1.0 || plan.target_ratio > 2.0) {
    return absl::InvalidArgumentError(
        absl::StrCat("plan target_ratio ", plan.target_ratio, " is outside [1, 2]"));
  }
  if (!std::isfinite(plan.sensitivity_threshold) || plan.sensitivity_threshold < 0) {
    return absl::InvalidArgumentError("plan sensitivity_threshold must be finite and >= 0");
  }
  if (!std::isfinite(plan.edge_fraction) || plan.edge_fraction <= 0 || plan.edge_fraction > 0.5) {
    return absl::InvalidArgumentError("plan edge_fraction must be in (0, 0.5]");
  }
  if (!std::isfinite(plan.quality_budget) || plan.quality_budget < 0) {
    return absl::InvalidArgumentError("plan quality_budget must be finite and >= 0");
  }
  std::vector<uint8_t> used(plan.n_layers, 0);
  for (const LayerPair& p : plan.pairs) {
    if (p.first < 0 || p.first >= p.second || p.second >= plan.n_layers) {
      return absl::InvalidArgumentError(absl::StrCat("plan pair (", p.first, ", ", p.second,
                                                     ") is not 0 <= first < second < ",
                                                     plan.n_layers));
    }
    if (!std::isfinite(p.distance) || p.distance < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("plan pair (", p.first, ", ", p.second, ") has a bad distance"));
    }
    for (int l : {p.first, p.second}) {
      if (used[l]) {
        return absl::InvalidArgumentError(absl::StrCat("plan layer ", l, " is in two pairs"));
      }
      if (plan.input_sensitive[l]) {
        return absl::InvalidArgumentError(absl::StrCat("plan shares input-sensitive layer ", l));
      }
      used[l] = 1;
    }
  }
  return absl::OkStatus();
}

std::string SerializePlan(const CompressionPlan& plan) {
  Writer w;
  w.Bytes(kMagic, 4);
  w.U16(kVersion);
  w.U16(0);
  w.U32(static_cast<uint32_t>(plan.n_layers));
  w.F64(plan.target_ratio);
  w.F64(plan.sensitivity_threshold);
  w.F64(plan.edge_fraction);
  w.F64(plan.quality_budget);
  w.U32(static_cast<uint32_t>(plan.pairs.size()));
  for (const LayerPair& p : plan.pairs) {
    w.U32(static_cast<uint32_t>(p.first));
    w.U32(static_cast<uint32_t>(p.second));
    w.F64(p.distance);
  }
  const int n = plan.n_layers > 0 ? plan.n_layers : 0;
  std::string bitmap((n + 7) / 8, '\0');
  for (int l = 0; l < n && l < static_cast<int>(plan.input_sensitive.size()); ++l) {
    if (plan.input_sensitive[l]) bitmap[l / 8] = static_cast<char>(bitmap[l / 8] | (1 << (l % 8)));
  }
  w.Bytes(bitmap.data(), bitmap.size());
  const uint64_t sum = Fnv1a64(reinterpret_cast<const uint8_t*>(w.out().data()), w.out().size());
  w.U64(sum);
  return std::move(w.out());
}

absl::StatusOr<CompressionPlan> ParsePlan(std::string_view bytes) {
  if (bytes.size() < kFixedHeaderBytes + kChecksumBytes) {
    return absl::DataLossError(absl::StrCat("plan is truncated: ", bytes.size(), " bytes"));
  }
  if (std::memcmp(bytes.data(), kMagic, 4) != 0) {
    return absl::DataLossError("plan has a wrong magic (not \"KRPL\")");
  }
  // The checksum covers everything before it; check it before trusting any
  // size field, so a flipped byte reads as corruption, not as a bad plan.
  const size_t body = bytes.size() - kChecksumBytes;
  Reader tail(bytes.substr(body));
  const uint64_t want = tail.Le(8);
  const uint64_t got = Fnv1a64(reinterpret_cast<const uint8_t*>(bytes.data()), body);
  if (want != got) return absl::DataLossError("plan checksum mismatch");

  Reader r(bytes.substr(0, body));
  r.Take(4);
  const uint16_t version = r.U16();
  const uint16_t flags = r.U16();
  if (version != kVersion) {
    return absl::UnimplementedError(absl::StrCat("plan version ", version, " is not supported"));
  }
  if (flags != 0) return absl::UnimplementedError(absl::StrCat("plan flags ", flags, " unknown"));
  CompressionPlan plan;
  const uint32_t n_layers = r.U32();
  if (n_layers < 1 || n_layers > kMaxLayers) {
    return absl::InvalidArgumentError(absl::StrCat("plan n_layers ", n_layers, " is out of range"));
  }
  plan.n_layers = static_cast<int>(n_layers);
  plan.target_ratio = r.F64();
  plan.sensitivity_threshold = r.F64();
  plan.edge_fraction = r.F64();
  plan.quality_budget = r.F64();
  const uint32_t n_pairs = r.U32();
  const size_t bitmap_bytes = (n_layers + 7) / 8;
  // Exact size check before any allocation sized by the header.
  if (n_pairs > n_layers / 2 ||
      body != kFixedHeaderBytes + static_cast<size_t>(n_pairs) * kPairBytes + bitmap_bytes) {
    return absl::DataLossError(absl::StrCat("plan size ", bytes.size(), " does not match ",
                                            n_layers, " layers and ", n_pairs, " pairs"));
  }
  plan.pairs.resize(n_pairs);
  for (LayerPair& p : plan.pairs) {
    const uint32_t a = r.U32(), b = r.U32();
    if (a >= n_layers || b >= n_layers) {
      return absl::InvalidArgumentError(absl::StrCat("plan pair (", a, ", ", b, ") out of range"));
    }
    p.first = static_cast<int>(a);
    p.second = static_cast<int>(b);
    p.distance = r.F64();
  }
  const char* bitmap = r.Take(bitmap_bytes);
  plan.input_sensitive.assign(n_layers, 0);
  for (uint32_t l = 0; l < n_layers; ++l) {
    plan.input_sensitive[l] = (static_cast<uint8_t>(bitmap[l / 8]) >> (l % 8)) & 1;
  }
  // Bits past the last layer must be zero: one plan, one encoding.
  if (n_layers % 8 != 0 &&
      (static_cast<uint8_t>(bitmap[bitmap_bytes - 1]) >> (n_layers % 8)) != 0) {
    return absl::InvalidArgumentError("plan sensitivity bitmap has bits beyond the last layer");
  }
  if (auto s = ValidatePlan(plan); !s.ok()) return s;
  return plan;
}

std::string PlanDebugString(const CompressionPlan& plan) {
  std::string out = absl::StrFormat("layers=%d ratio=%.2f pairs=[", plan.n_layers, plan.ratio());
  for (size_t i = 0; i < plan.pairs.size(); ++i) {
    absl::StrAppend(&out, i ? " " : "", "(", plan.pairs[i].first, ",", plan.pairs[i].second, ")");
  }
  absl::StrAppend(&out, "] sensitive=[");
  bool first = true;
  for (size_t l = 0; l < plan.input_sensitive.size(); ++l) {
    if (!plan.input_sensitive[l]) continue;
    absl::StrAppend(&out, first ? "" : " ", l);
    first = false;
  }
  absl::StrAppend(&out, "]");
  return out;
}

}  // namespace krul
