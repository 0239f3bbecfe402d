// Cross-layer KV compression (MiniCache-style) of one conversation, and its
// inverse, addressable per layer and token range for the restore scheduler.
//
// Stored form. Given a CompressionPlan, the number of history tokens N and,
// per layer l, the first stored token n_l (tokens [0, n_l) are recomputed at
// restore and never stored), the KV is a list of segments:
//  - kPlain segment: one layer's K and V rows for tokens [begin, end), as they
//    are (fp32 = bit-exact; or fp16 / bf16).
//  - kMerged segment: a shared pair (a, b), a < b, for tokens [begin, end)
//    where BOTH layers are stored, i.e. [max(n_a, n_b), N). Per token, KV head
//    and tensor (K or V), the directions x_a/|x_a| and x_b/|x_b| are merged by
//    SLERP at t = 0.5 and both norms kept, so layer a restores as
//    |x_a| * merged and b as |x_b| * merged. A unit whose angle exceeds
//    retain_angle_degrees is retained: the direction slot then holds x_a as
//    is and x_b is appended, so both restore exactly (up to dtype).
//    Where only one layer of a pair is stored ([min(n_a,n_b), max(n_a,n_b))),
//    that layer gets plain segments.
// Segments never cross a multiple of `chunk_tokens` (absolute positions), so
// one segment maps to one KV store block.
//
// Payload layout of a segment (little-endian, no padding; n = end - begin,
// H = n_kv_heads, d = head_dim, kv_dim = H * d, s = DTypeSize(dtype)):
//   kPlain : K (n, kv_dim) dtype | V (n, kv_dim) dtype
//   kMerged: K dirs (n, kv_dim) dtype | V dirs (n, kv_dim) dtype |
//            norms (n, H, 4) f32 = |K_a| |K_b| |V_a| |V_b| |
//            u32 unit[R], strictly increasing | R x (d) dtype: x_b of unit i
//   where unit = ((t - begin) * H + head) * 2 + (0 for K, 1 for V) and R, the
//   number of retained units, follows from the payload size.
//
// Decoding writes into any backend's cache (backend_kv_cache.h) through its
// staged fp32 rows: on the CPU straight into the KvCache.
//
// Thread safety: functions are thread-safe; CompressedKv is a value
// (thread-compatible); decoding distinct layers into one CPU KvCache from
// several threads is fine (a device cache takes one writing thread).
#ifndef KRUL_COMPRESS_COMPRESSOR_H_
#define KRUL_COMPRESS_COMPRESSOR_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/base/dtype.h"
#include "krul/base/thread_pool.h"
#include "krul/compress/compression_plan.h"
#include "krul/engine/backend_kv_cache.h"
#include "krul/engine/kv_cache.h"
#include "krul/model/model.h"

namespace krul {

// The KV geometry of a model.
struct KvShape {
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim = 0;

  int kv_dim() const { return n_kv_heads * head_dim; }
  static KvShape FromConfig(const ModelConfig& config);
  // INVALID_ARGUMENT unless every field is positive.
  absl::Status Validate() const;
  friend bool operator==(const KvShape&, const KvShape&) = default;
};

enum class SegmentKind : uint8_t {
  kPlain = 0,
  kMerged = 1,
};

// One stored piece: a layer (kPlain) or a shared pair (kMerged) over tokens
// [begin, end). Owns its payload.
struct KvSegment {
  SegmentKind kind = SegmentKind::kPlain;
  int layer = 0;     // kPlain: the layer; kMerged: the pair's first layer
  int partner = -1;  // kMerged: the pair's second layer (> layer); kPlain: -1
  int begin = 0;
  int end = 0;
  DType dtype = DType::kF32;
  std::vector<uint8_t> payload;

  int num_tokens() const { return end - begin; }
  bool Covers(int l) const { return l == layer || (kind == SegmentKind::kMerged && l == partner); }
  size_t stored_bytes() const { return payload.size(); }
};

// Bytes per token of a plain segment (one layer) and of a merged segment
// (both layers of a pair, no retention), and per retained unit.
size_t PlainBytesPerToken(const KvShape& shape, DType dtype);
size_t MergedBytesPerToken(const KvShape& shape, DType dtype);
size_t RetainedUnitBytes(const KvShape& shape, DType dtype);

// Number of retained units of a merged segment (0 for plain), from its size.
// DATA_LOSS when the payload size is impossible for the segment's shape.
absl::StatusOr<int64_t> RetainedUnits(const KvSegment& segment, const KvShape& shape);

// Checks a segment that came from storage or the network: kind and dtype
// known, 0 <= layer < partner < n_layers for merged (partner == -1 for
// plain), 0 <= begin < end, payload size consistent, retained units strictly
// increasing and in range. INVALID_ARGUMENT for bad metadata, DATA_LOSS for
// an inconsistent payload. Values themselves (NaN, ...) are not checked.
absl::Status ValidateSegment(const KvSegment& segment, const KvShape& shape);

// Writes layer `layer`'s K and V for tokens [begin, end) into `cache` from
// `segment` (StageRows, decode, CommitRows). [begin, end) must lie inside the
// segment, `layer` must be one the segment covers, the cache must have the
// shape's layers and kv_dim and room for `end`. INVALID_ARGUMENT for a bad
// request, errors of ValidateSegment for a bad segment (validated on every
// call, O(retained)); errors of the cache's StageRows / CommitRows.
absl::Status DecodeSegment(const KvSegment& segment, const KvShape& shape, int layer, int begin,
                           int end, BackendKvCache& cache);

struct CompressorOptions {
  // Storage type of plain rows and merged directions (norms are always f32).
  DType dtype = DType::kF32;
  // Segments never cross a multiple of this many tokens; 0 = one segment per
  // layer (or pair) range. Default 256.
  int chunk_tokens = 256;
  // Units (token, KV head, K|V) of a shared pair whose angle between the
  // two layers exceeds this are retained unmerged. In [0, 180]; 180 = never
  // retain. Default 180.
  double retain_angle_degrees = 180.0;
  // Segments are encoded in parallel on this pool when set. Not owned.
  ThreadPool* pool = nullptr;

  // INVALID_ARGUMENT naming the field when out of range.
  absl::Status Validate() const;
};

// One conversation's compressed KV.
struct CompressedKv {
  KvShape shape;
  CompressionPlan plan;
  int num_tokens = 0;             // N: history tokens
  std::vector<int> stored_begin;  // n_l per layer: tokens [n_l, N) are stored
  DType dtype = DType::kF32;
  // Sorted by (layer, begin); merged segments are listed under the pair's
  // first layer.
  std::vector<KvSegment> segments;

  // Sum of segment payload bytes (pairs counted once).
  size_t stored_bytes() const;
  // Bytes of fp32 K+V for tokens [n_l, N) of every layer, as if uncompressed.
  size_t uncompressed_bytes() const;
  // Units retained unmerged over all merged segments.
  int64_t retained_units() const;
  // Indices into `segments` of the segments covering `layer`, by begin.
  std::vector<size_t> SegmentsFor(int layer) const;

  // Restores `layer` for tokens [begin, end) ⊆ [stored_begin[layer], N) into
  // `cache` (several segments as needed). INVALID_ARGUMENT for a range that
  // is not stored; errors of DecodeSegment.
  absl::Status DecompressLayer(int layer, int begin, int end, BackendKvCache& cache) const;
  // Every layer's whole stored range.
  absl::Status DecompressAll(BackendKvCache& cache) const;
};

// Compresses tokens [stored_begin[l], num_tokens) of every layer l of
// `cache` according to `plan`. Empty `stored_begin` means 0 for every layer
// (store everything). INVALID_ARGUMENT when the plan does not validate or
// does not match the shape, the shape does not match the cache, num_tokens is
// outside [1, cache.capacity()], stored_begin has the wrong size or a value
// outside [0, num_tokens], or the options do not validate.
absl::StatusOr<CompressedKv> CompressKv(const KvCache& cache, const KvShape& shape,
                                        const CompressionPlan& plan, int num_tokens,
                                        std::span<const int> stored_begin,
                                        const CompressorOptions& options = {});

// Bytes CompressKv would store without retention (for the cost model /
// scheduler, before compressing): plain layers (N - n_l) * PlainBytesPerToken;
// a pair: (N - max n) * MergedBytesPerToken + |n_a - n_b| * PlainBytesPerToken.
// stored_begin as in CompressKv (sizes are not re-validated beyond a CHECK-free
// clamp: pass validated input).
size_t EstimateStoredBytes(const KvShape& shape, const CompressionPlan& plan, int num_tokens,
                           std::span<const int> stored_begin, DType dtype);

// SLERP of two unit vectors: sin((1-t)W)/sin(W) u + sin(tW)/sin(W) v with
// W = angle(u, v); falls back to linear interpolation when W is ~0. Opposite
// vectors (W ~ pi) have no unique result; `out` then gets u. Used by the
// compressor at t = 0.5; exposed for tests.
void Slerp(const float* u, const float* v, int n, double t, float* out);

}  // namespace krul

#endif  // KRUL_COMPRESS_COMPRESSOR_H_
