// MiniCache-style cross-layer merge of a conversation's KV, segment codec and
// restore. Layouts are documented in krul/compressor.h.
#include "krul/compress/compressor.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <numbers>

#include "absl/strings/str_cat.h"

namespace krul {
namespace {

static_assert(std::endian::native == std::endian::little,
              "segment payloads are little-endian and copied with memcpy");

constexpr size_t kNormsPerUnitPair = 4;  // |K_a| |K_b| |V_a| |V_b| per (token, head)

struct MergedLayout {
  size_t dir_bytes;  // one of K / V dirs: n * kv_dim * s
  size_t norms_offset;
  size_t units_offset;  // after norms
  size_t fixed_bytes;   // everything but the retained part
};

MergedLayout LayoutOf(const KvShape& shape, DType dtype, int64_t n) {
  MergedLayout m;
  m.dir_bytes = static_cast<size_t>(n) * shape.kv_dim() * DTypeSize(dtype);
  m.norms_offset = 2 * m.dir_bytes;
  m.units_offset =
      m.norms_offset + static_cast<size_t>(n) * shape.n_kv_heads * kNormsPerUnitPair * 4;
  m.fixed_bytes = m.units_offset;
  return m;
}

bool KnownDType(DType d) { return d == DType::kF32 || d == DType::kF16 || d == DType::kBF16; }

double Norm(const float* x, int n) {
  double s = 0;
  for (int i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  return std::sqrt(s);
}

// Splits [lo, hi) at multiples of `chunk` (0 = no split).
std::vector<std::pair<int, int>> Chunks(int lo, int hi, int chunk) {
  std::vector<std::pair<int, int>> out;
  for (int b = lo; b < hi;) {
    int e = hi;
    if (chunk > 0) e = std::min(hi, (b / chunk + 1) * chunk);
    out.emplace_back(b, e);
    b = e;
  }
  return out;
}

void EncodePlain(const KvCache& cache, const KvShape& shape, KvSegment& seg) {
  const size_t n = seg.num_tokens(), kv = shape.kv_dim(), s = DTypeSize(seg.dtype);
  seg.payload.resize(2 * n * kv * s);
  ConvertFromFp32(cache.key(seg.layer, seg.begin), seg.dtype, seg.payload.data(), n * kv);
  ConvertFromFp32(cache.value(seg.layer, seg.begin), seg.dtype, seg.payload.data() + n * kv * s,
                  n * kv);
}

// Merges one unit (one head's K or V row of both layers). Returns true when
// the unit must be retained; otherwise `dir` holds the merged unit direction.
bool MergeUnit(const float* xa, const float* xb, int d, double na, double nb, double max_angle,
               float* dir, std::vector<float>& ua, std::vector<float>& ub) {
  if (na == 0 && nb == 0) {
    std::fill(dir, dir + d, 0.0f);
    return false;
  }
  // A zero vector has no direction: the other layer's direction restores it
  // exactly (0 * anything = 0) and keeps the partner exact too.
  if (na == 0 || nb == 0) {
    const float* x = na == 0 ? xb : xa;
    const double inv = 1.0 / (na == 0 ? nb : na);
    for (int i = 0; i < d; ++i) dir[i] = static_cast<float>(x[i] * inv);
    return false;
  }
  double dot = 0;
  for (int i = 0; i < d; ++i) dot += static_cast<double>(xa[i]) * xb[i];
  const double cos = std::clamp(dot / (na * nb), -1.0, 1.0);
  if (std::acos(cos) > max_angle) return true;
  for (int i = 0; i < d; ++i) {
    ua[i] = static_cast<float>(xa[i] / na);
    ub[i] = static_cast<float>(xb[i] / nb);
  }
  Slerp(ua.data(), ub.data(), d, 0.5, dir);
  // SLERP of unit vectors is a unit vector up to rounding; normalizing here
  // keeps the fp16/bf16 rounding the only error in |dir|.
  const double nd = Norm(dir, d);
  if (nd > 0) {
    for (int i = 0; i < d; ++i) dir[i] = static_cast<float>(dir[i] / nd);
  }
  return false;
}

void EncodeMerged(const KvCache& cache, const KvShape& shape, double max_angle, KvSegment& seg) {
  const int n = seg.num_tokens(), heads = shape.n_kv_heads, d = shape.head_dim;
  const size_t kv = shape.kv_dim();
  const MergedLayout m = LayoutOf(shape, seg.dtype, n);
  std::vector<float> dirs(2 * static_cast<size_t>(n) * kv);  // K dirs then V dirs, fp32
  std::vector<float> norms(static_cast<size_t>(n) * heads * kNormsPerUnitPair);
  std::vector<uint32_t> units;
  std::vector<float> retained_b;
  std::vector<float> ua(d), ub(d);
  for (int t = 0; t < n; ++t) {
    const int pos = seg.begin + t;
    for (int h = 0; h < heads; ++h) {
      for (int kvi = 0; kvi < 2; ++kvi) {
        const float* xa =
            (kvi == 0 ? cache.key(seg.layer, pos) : cache.value(seg.layer, pos)) + h * d;
        const float* xb =
            (kvi == 0 ? cache.key(seg.partner, pos) : cache.value(seg.partner, pos)) + h * d;
        const double na = Norm(xa, d), nb = Norm(xb, d);
        float* dir =
            dirs.data() + kvi * static_cast<size_t>(n) * kv + static_cast<size_t>(t) * kv + h * d;
        float* norm =
            norms.data() + (static_cast<size_t>(t) * heads + h) * kNormsPerUnitPair + 2 * kvi;
        norm[0] = static_cast<float>(na);
        norm[1] = static_cast<float>(nb);
        if (MergeUnit(xa, xb, d, na, nb, max_angle, dir, ua, ub)) {
          std::copy(xa, xa + d, dir);
          units.push_back(static_cast<uint32_t>((static_cast<size_t>(t) * heads + h) * 2 + kvi));
          retained_b.insert(retained_b.end(), xb, xb + d);
        }
      }
    }
  }
  const size_t r = units.size();
  seg.payload.resize(m.fixed_bytes + r * RetainedUnitBytes(shape, seg.dtype));
  uint8_t* p = seg.payload.data();
  ConvertFromFp32(dirs.data(), seg.dtype, p, 2 * static_cast<size_t>(n) * kv);
  std::memcpy(p + m.norms_offset, norms.data(), norms.size() * sizeof(float));
  std::memcpy(p + m.units_offset, units.data(), r * sizeof(uint32_t));
  ConvertFromFp32(retained_b.data(), seg.dtype, p + m.units_offset + r * sizeof(uint32_t),
                  retained_b.size());
}

}  // namespace

KvShape KvShape::FromConfig(const ModelConfig& config) {
  return KvShape{config.n_layers, config.n_kv_heads, config.head_size()};
}

absl::Status KvShape::Validate() const {
  if (n_layers < 1 || n_kv_heads < 1 || head_dim < 1 || n_layers > 4096 ||
      static_cast<int64_t>(n_kv_heads) * head_dim > (1 << 20)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bad KV shape: layers=", n_layers, " kv_heads=", n_kv_heads, " head_dim=", head_dim));
  }
  return absl::OkStatus();
}

size_t PlainBytesPerToken(const KvShape& shape, DType dtype) {
  return 2 * static_cast<size_t>(shape.kv_dim()) * DTypeSize(dtype);
}

size_t MergedBytesPerToken(const KvShape& shape, DType dtype) {
  return PlainBytesPerToken(shape, dtype) +
         static_cast<size_t>(shape.n_kv_heads) * kNormsPerUnitPair * 4;
}

size_t RetainedUnitBytes(const KvShape& shape, DType dtype) {
  return sizeof(uint32_t) + static_cast<size_t>(shape.head_dim) * DTypeSize(dtype);
}

absl::StatusOr<int64_t> RetainedUnits(const KvSegment& segment, const KvShape& shape) {
  if (!KnownDType(segment.dtype)) return absl::InvalidArgumentError("segment has an unknown dtype");
  if (segment.end <= segment.begin) return absl::InvalidArgumentError("segment has no tokens");
  const int64_t n = segment.num_tokens();
  if (segment.kind == SegmentKind::kPlain) {
    if (segment.payload.size() != n * PlainBytesPerToken(shape, segment.dtype)) {
      return absl::DataLossError(absl::StrCat("plain segment payload is ", segment.payload.size(),
                                              " bytes; expected ",
                                              n * PlainBytesPerToken(shape, segment.dtype)));
    }
    return 0;
  }
  const size_t fixed = n * MergedBytesPerToken(shape, segment.dtype);
  const size_t unit = RetainedUnitBytes(shape, segment.dtype);
  if (segment.payload.size() < fixed || (segment.payload.size() - fixed) % unit != 0) {
    return absl::DataLossError(absl::StrCat("merged segment payload of ", segment.payload.size(),
                                            " bytes does not fit ", n, " tokens"));
  }
  const int64_t r = static_cast<int64_t>((segment.payload.size() - fixed) / unit);
  if (r > n * shape.n_kv_heads * 2) {
    return absl::DataLossError("merged segment retains more units than it has");
  }
  return r;
}

absl::Status ValidateSegment(const KvSegment& segment, const KvShape& shape) {
  if (auto s = shape.Validate(); !s.ok()) return s;
  if (segment.kind != SegmentKind::kPlain && segment.kind != SegmentKind::kMerged) {
    return absl::InvalidArgumentError("segment has an unknown kind");
  }
  if (segment.kind == SegmentKind::kPlain) {
    if (segment.layer < 0 || segment.layer >= shape.n_layers || segment.partner != -1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "plain segment layer ", segment.layer, " (partner ", segment.partner, ") is invalid"));
    }
  } else if (segment.layer < 0 || segment.layer >= segment.partner ||
             segment.partner >= shape.n_layers) {
    return absl::InvalidArgumentError(absl::StrCat("merged segment pair (", segment.layer, ", ",
                                                   segment.partner, ") is invalid"));
  }
  if (segment.begin < 0 || segment.end <= segment.begin) {
    return absl::InvalidArgumentError(
        absl::StrCat("segment token range [", segment.begin, ", ", segment.end, ") is invalid"));
  }
  auto r = RetainedUnits(segment, shape);
  if (!r.ok()) return r.status();
  if (*r == 0) return absl::OkStatus();
  const MergedLayout m = LayoutOf(shape, segment.dtype, segment.num_tokens());
  const uint64_t limit = static_cast<uint64_t>(segment.num_tokens()) * shape.n_kv_heads * 2;
  uint64_t prev = 0;
  for (int64_t i = 0; i < *r; ++i) {
    uint32_t u;
    std::memcpy(&u, segment.payload.data() + m.units_offset + i * sizeof(uint32_t), sizeof(u));
    if (u >= limit || (i > 0 && u <= prev)) {
      return absl::DataLossError(absl::StrCat("merged segment retained unit ", u, " at index ", i,
                                              " is out of range or out of order"));
    }
    prev = u;
  }
  return absl::OkStatus();
}

absl::Status DecodeSegment(const KvSegment& segment, const KvShape& shape, int layer, int begin,
                           int end, BackendKvCache& cache) {
  if (auto s = ValidateSegment(segment, shape); !s.ok()) return s;
  if (!segment.Covers(layer)) {
    return absl::InvalidArgumentError(absl::StrCat("segment does not hold layer ", layer));
  }
  if (begin < segment.begin || end > segment.end || begin >= end) {
    return absl::InvalidArgumentError(absl::StrCat("range [", begin, ", ", end,
                                                   ") is not inside the segment's [", segment.begin,
                                                   ", ", segment.end, ")"));
  }
  if (cache.n_layers() != shape.n_layers || cache.kv_dim() != shape.kv_dim() ||
      end > cache.capacity()) {
    return absl::InvalidArgumentError("KV cache does not match the shape or is too small");
  }
  const size_t kv = shape.kv_dim(), s = DTypeSize(segment.dtype);
  const size_t n = segment.num_tokens(), off = begin - segment.begin, count = end - begin;
  const uint8_t* p = segment.payload.data();
  // Decoded straight into the cache's staged rows (the CPU cache's own rows).
  auto staged = cache.StageRows(layer, begin, static_cast<int>(count));
  if (!staged.ok()) return staged.status();
  const KvLayerView& rows = *staged;
  if (segment.kind == SegmentKind::kPlain) {
    ConvertToFp32(segment.dtype, p + off * kv * s, rows.keys, count * kv);
    ConvertToFp32(segment.dtype, p + (n + off) * kv * s, rows.values, count * kv);
    return cache.CommitRows(rows);
  }
  const int heads = shape.n_kv_heads, d = shape.head_dim;
  const int which = layer == segment.layer ? 0 : 1;
  const MergedLayout m = LayoutOf(shape, segment.dtype, n);
  const int64_t r = *RetainedUnits(segment, shape);
  const uint8_t* units = p + m.units_offset;
  const uint8_t* raw_b = units + r * sizeof(uint32_t);
  auto unit_at = [&](int64_t i) {
    uint32_t u;
    std::memcpy(&u, units + i * sizeof(uint32_t), sizeof(u));
    return u;
  };
  // First retained unit at or after token `off` (units are sorted).
  int64_t lo = 0, hi = r;
  const uint64_t first_unit = off * heads * 2;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (unit_at(mid) < first_unit)
      lo = mid + 1;
    else
      hi = mid;
  }
  int64_t next = lo;
  for (size_t t = off; t < off + count; ++t) {
    const int row = static_cast<int>(t - off);  // in the staged rows
    float* outs[2] = {rows.key(row), rows.value(row)};
    for (int h = 0; h < heads; ++h) {
      float norms[kNormsPerUnitPair];
      std::memcpy(norms, p + m.norms_offset + (t * heads + h) * sizeof(norms), sizeof(norms));
      for (int kvi = 0; kvi < 2; ++kvi) {
        const uint64_t unit = (t * heads + h) * 2 + kvi;
        float* out = outs[kvi] + h * d;
        const uint8_t* dir = p + kvi * m.dir_bytes + (t * kv + h * d) * s;
        if (next < r && unit_at(next) == unit) {
          ConvertToFp32(segment.dtype, which == 0 ? dir : raw_b + next * d * s, out, d);
          ++next;
          continue;
        }
        ConvertToFp32(segment.dtype, dir, out, d);
        // Renormalizing makes the restored norm the stored one, whatever the
        // rounding of the direction in fp16 / bf16.
        const double nd = Norm(out, d);
        const double scale = nd > 0 ? norms[2 * kvi + which] / nd : 0.0;
        for (int i = 0; i < d; ++i) out[i] = static_cast<float>(out[i] * scale);
      }
    }
  }
  return cache.CommitRows(rows);
}

absl::Status CompressorOptions::Validate() const {
  if (!KnownDType(dtype)) return absl::InvalidArgumentError("dtype is unknown");
  if (chunk_tokens < 0) return absl::InvalidArgumentError("chunk_tokens must be >= 0");
  if (!std::isfinite(retain_angle_degrees) || retain_angle_degrees < 0 ||
      retain_angle_degrees > 180) {
    return absl::InvalidArgumentError("retain_angle_degrees must be in [0, 180]");
  }
  return absl::OkStatus();
}

size_t CompressedKv::stored_bytes() const {
  size_t total = 0;
  for (const KvSegment& s : segments) total += s.stored_bytes();
  return total;
}

size_t CompressedKv::uncompressed_bytes() const {
  size_t total = 0;
  for (int l = 0; l < static_cast<int>(stored_begin.size()); ++l) {
    total +=
        static_cast<size_t>(num_tokens - stored_begin[l]) * PlainBytesPerToken(shape, DType::kF32);
  }
  return total;
}

int64_t CompressedKv::retained_units() const {
  int64_t total = 0;
  for (const KvSegment& s : segments) {
    auto r = RetainedUnits(s, shape);
    if (r.ok()) total += *r;
  }
  return total;
}

std::vector<size_t> CompressedKv::SegmentsFor(int layer) const {
  std::vector<size_t> out;
  for (size_t i = 0; i < segments.size(); ++i) {
    if (segments[i].Covers(layer)) out.push_back(i);
  }
  std::sort(out.begin(), out.end(),
            [&](size_t a, size_t b) { return segments[a].begin < segments[b].begin; });
  return out;
}

absl::Status CompressedKv::DecompressLayer(int layer, int begin, int end,
                                           BackendKvCache& cache) const {
  if (layer < 0 || layer >= shape.n_layers || static_cast<size_t>(layer) >= stored_begin.size()) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " is out of range"));
  }
  if (begin < stored_begin[layer] || end > num_tokens || begin > end) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " stores tokens [",
                                                   stored_begin[layer], ", ", num_tokens,
                                                   "); asked for [", begin, ", ", end, ")"));
  }
  int covered = begin;
  for (size_t i : SegmentsFor(layer)) {
    const KvSegment& seg = segments[i];
    const int b = std::max(covered, seg.begin), e = std::min(end, seg.end);
    if (b >= e) continue;
    if (b != covered) break;  // a gap: reported below
    if (auto s = DecodeSegment(seg, shape, layer, b, e, cache); !s.ok()) return s;
    covered = e;
  }
  if (covered < end) {
    return absl::DataLossError(
        absl::StrCat("no segment holds token ", covered, " of layer ", layer));
  }
  return absl::OkStatus();
}

absl::Status CompressedKv::DecompressAll(BackendKvCache& cache) const {
  for (int l = 0; l < shape.n_layers && static_cast<size_t>(l) < stored_begin.size(); ++l) {
    if (stored_begin[l] >= num_tokens) continue;
    if (auto s = DecompressLayer(l, stored_begin[l], num_tokens, cache); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<CompressedKv> CompressKv(const KvCache& cache, const KvShape& shape,
                                        const CompressionPlan& plan, int num_tokens,
                                        std::span<const int> stored_begin,
                                        const CompressorOptions& options) {
  if (auto s = options.Validate(); !s.ok()) return s;
  if (auto s = shape.Validate(); !s.ok()) return s;
  if (auto s = ValidatePlan(plan); !s.ok()) return s;
  if (cache.n_layers() != shape.n_layers || cache.kv_dim() != shape.kv_dim()) {
    return absl::InvalidArgumentError("KV cache does not match the KV shape");
  }
  if (plan.n_layers != shape.n_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("plan is for ", plan.n_layers, " layers; the model has ", shape.n_layers));
  }
  if (num_tokens < 1 || num_tokens > cache.capacity()) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_tokens ", num_tokens, " is outside [1, ", cache.capacity(), "]"));
  }
  CompressedKv out;
  out.shape = shape;
  out.plan = plan;
  out.num_tokens = num_tokens;
  out.dtype = options.dtype;
  if (stored_begin.empty()) {
    out.stored_begin.assign(shape.n_layers, 0);
  } else {
    if (stored_begin.size() != static_cast<size_t>(shape.n_layers)) {
      return absl::InvalidArgumentError("stored_begin must have one entry per layer");
    }
    for (int l = 0; l < shape.n_layers; ++l) {
      if (stored_begin[l] < 0 || stored_begin[l] > num_tokens) {
        return absl::InvalidArgumentError(absl::StrCat("stored_begin[", l, "] = ", stored_begin[l],
                                                       " is outside [0, ", num_tokens, "]"));
      }
    }
    out.stored_begin.assign(stored_begin.begin(), stored_begin.end());
  }

  auto add = [&](SegmentKind kind, int layer, int partner, int lo, int hi) {
    for (auto [b, e] : Chunks(lo, hi, options.chunk_tokens)) {
      KvSegment seg;
      seg.kind = kind;
      seg.layer = layer;
      seg.partner = partner;
      seg.begin = b;
      seg.end = e;
      seg.dtype = options.dtype;
      out.segments.push_back(std::move(seg));
    }
  };
  const int n = num_tokens;
  for (int l = 0; l < shape.n_layers; ++l) {
    const int partner = plan.PartnerOf(l);
    const int nl = out.stored_begin[l];
    if (partner < 0) {
      add(SegmentKind::kPlain, l, -1, nl, n);
      continue;
    }
    const int np = out.stored_begin[partner];
    // Tokens where only this layer is stored stay plain: merging them would
    // save nothing (the partner's KV there is recomputed, not stored).
    if (nl < np) add(SegmentKind::kPlain, l, -1, nl, np);
    if (l < partner) add(SegmentKind::kMerged, l, partner, std::max(nl, np), n);
  }
  std::sort(out.segments.begin(), out.segments.end(), [](const KvSegment& a, const KvSegment& b) {
    return std::tie(a.layer, a.begin, a.kind) < std::tie(b.layer, b.begin, b.kind);
  });

  const double max_angle = options.retain_angle_degrees >= 180.0
                               ? 2 * std::numbers::pi  // never exceeded: acos <= pi
                               : options.retain_angle_degrees * std::numbers::pi / 180.0;
  auto encode = [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      KvSegment& seg = out.segments[i];
      if (seg.kind == SegmentKind::kPlain) {
        EncodePlain(cache, shape, seg);
      } else {
        EncodeMerged(cache, shape, max_angle, seg);
      }
    }
  };
  if (options.pool != nullptr) {
    options.pool->ParallelFor(static_cast<int64_t>(out.segments.size()), encode);
  } else {
    encode(0, static_cast<int64_t>(out.segments.size()));
  }
  return out;
}

size_t EstimateStoredBytes(const KvShape& shape, const CompressionPlan& plan, int num_tokens,
                           std::span<const int> stored_begin, DType dtype) {
  auto nb = [&](int l) {
    if (stored_begin.empty() || static_cast<size_t>(l) >= stored_begin.size()) return 0;
    return std::clamp(stored_begin[l], 0, num_tokens);
  };
  size_t total = 0;
  for (int l = 0; l < shape.n_layers; ++l) {
    const int partner = plan.PartnerOf(l);
    if (partner < 0) {
      total += static_cast<size_t>(num_tokens - nb(l)) * PlainBytesPerToken(shape, dtype);
    } else if (l < partner) {
      const int lo = std::min(nb(l), nb(partner)), hi = std::max(nb(l), nb(partner));
      total += static_cast<size_t>(num_tokens - hi) * MergedBytesPerToken(shape, dtype) +
               static_cast<size_t>(hi - lo) * PlainBytesPerToken(shape, dtype);
    }
  }
  return total;
}

void Slerp(const float* u, const float* v, int n, double t, float* out) {
  double dot = 0;
  for (int i = 0; i < n; ++i) dot += static_cast<double>(u[i]) * v[i];
  dot = std::clamp(dot, -1.0, 1.0);
  const double w = std::acos(dot);
  if (w < 1e-6) {
    for (int i = 0; i < n; ++i) out[i] = static_cast<float>((1 - t) * u[i] + t * v[i]);
    return;
  }
  if (std::numbers::pi - w < 1e-6) {
    std::copy(u, u + n, out);
    return;
  }
  const double sw = std::sin(w);
  const double ca = std::sin((1 - t) * w) / sw, cb = std::sin(t * w) / sw;
  for (int i = 0; i < n; ++i) out[i] = static_cast<float>(ca * u[i] + cb * v[i]);
}

}  // namespace krul
