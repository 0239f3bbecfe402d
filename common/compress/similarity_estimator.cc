// The token-wise heterogeneous similarity estimator (see the header).
//
// Engine thread: OnAttention. A decode token's rows of every layer are kept
// (written there by the engine through DecodeBuffer) and compared all at
// once when its last layer arrives (kernels in attention_distance.h);
// prefill blocks are copied into a Task and queued. Background thread: Worker() pairs each queued
// block with the other layers' blocks of the same queries (a Slot), updates its own D and frees a
// slot once every layer has reported.
#include "krul/compress/similarity_estimator.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <deque>
#include <memory>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "attention_distance.h"
#include "krul/base/aligned_buffer.h"

namespace krul {
namespace {

using internal::AddEdgeMass;
using internal::EdgeWindow;
using internal::kDistanceGroup;
using internal::kLanes;
using internal::kTile;
using internal::LaneSums;
using internal::LaneTotal;
using internal::SquaredDistanceGroup;
using internal::SumWindows;
using internal::TileFn;
using internal::TileKernel;

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Uninitialized float storage: a copied block is overwritten whole, so the
// zero-fill of AlignedBuffer would double the engine thread's memory traffic.
// Buffers are recycled (Impl::TakeBuffer), so `capacity` may exceed `count`.
struct RowBuffer {
  std::unique_ptr<float[]> ptr;
  size_t count = 0;
  size_t capacity = 0;
  void Allocate(size_t n) {
    if (n > capacity) {
      ptr.reset(new float[n]);
      capacity = n;
    }
    count = n;
  }
  float* data() { return ptr.get(); }
  const float* data() const { return ptr.get(); }
  size_t size() const { return count; }
};

// Rows sampled out of `n` with stride `s`: indices 0, s, 2s, ... and the
// number of rows each stands for (the last may stand for fewer).
struct Sample {
  std::vector<int> index;
  std::vector<double> weight;
};

Sample MakeSample(int n, int stride) {
  Sample s;
  for (int i = 0; i < n; i += stride) {
    s.index.push_back(i);
    s.weight.push_back(std::min(stride, n - i));
  }
  return s;
}

}  // namespace

absl::Status SimilarityEstimatorOptions::Validate() const {
  if (!std::isfinite(edge_fraction) || edge_fraction <= 0 || edge_fraction > 0.5) {
    return absl::InvalidArgumentError("edge_fraction must be in (0, 0.5]");
  }
  if (prefill_query_stride < 1)
    return absl::InvalidArgumentError("prefill_query_stride must be >= 1");
  if (prefill_head_stride < 1)
    return absl::InvalidArgumentError("prefill_head_stride must be >= 1");
  if (decode_head_stride < 1) return absl::InvalidArgumentError("decode_head_stride must be >= 1");
  if (decode_token_stride < 1) {
    return absl::InvalidArgumentError("decode_token_stride must be >= 1");
  }
  if (max_slot_bytes < 1) return absl::InvalidArgumentError("max_slot_bytes must be >= 1");
  if (max_pending_bytes < max_slot_bytes) {
    return absl::InvalidArgumentError("max_pending_bytes must be >= max_slot_bytes");
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// SimilarityEstimate

SimilarityEstimate SimilarityEstimate::Empty(int n_layers, double edge_fraction) {
  SimilarityEstimate e;
  e.n_layers = n_layers;
  const size_t l = n_layers > 0 ? n_layers : 0;
  e.distance.assign(l * l, 0.0);
  e.prefill_distance.assign(l * l, 0.0);
  e.decode_distance.assign(l * l, 0.0);
  e.first_mass_sum.assign(l, 0.0);
  e.last_mass_sum.assign(l, 0.0);
  e.mass_weight.assign(l, 0.0);
  e.edge_fraction = edge_fraction;
  return e;
}

double SimilarityEstimate::MeanDistance(int a, int b) const {
  return rows_represented > 0 ? Distance(a, b) / rows_represented : 0.0;
}

double SimilarityEstimate::FirstMass(int layer) const {
  return mass_weight[layer] > 0 ? first_mass_sum[layer] / mass_weight[layer] : 0.0;
}

double SimilarityEstimate::LastMass(int layer) const {
  return mass_weight[layer] > 0 ? last_mass_sum[layer] / mass_weight[layer] : 0.0;
}

absl::Status SimilarityEstimate::Merge(const SimilarityEstimate& other) {
  if (other.n_layers != n_layers || other.edge_fraction != edge_fraction ||
      other.distance.size() != distance.size() || other.mass_weight.size() != mass_weight.size()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot merge an estimate of ", other.n_layers,
                                                   " layers into one of ", n_layers));
  }
  auto add = [](std::vector<double>& a, const std::vector<double>& b) {
    if (a.size() < b.size()) a.resize(b.size(), 0.0);
    for (size_t i = 0; i < b.size(); ++i) a[i] += b[i];
  };
  add(distance, other.distance);
  add(prefill_distance, other.prefill_distance);
  add(decode_distance, other.decode_distance);
  add(first_mass_sum, other.first_mass_sum);
  add(last_mass_sum, other.last_mass_sum);
  add(mass_weight, other.mass_weight);
  prefill_tokens += other.prefill_tokens;
  decode_tokens += other.decode_tokens;
  rows_represented += other.rows_represented;
  rows_compared += other.rows_compared;
  sampled = sampled || other.sampled;
  engine_thread_seconds += other.engine_thread_seconds;
  decode_engine_seconds += other.decode_engine_seconds;
  blocked_seconds += other.blocked_seconds;
  background_seconds += other.background_seconds;
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Impl

class SimilarityEstimator::Impl {
 public:
  Impl(const ModelConfig& config, const SimilarityEstimatorOptions& options)
      : options_(options),
        n_layers_(config.n_layers),
        n_heads_(config.n_heads),
        seq_len_(config.seq_len),
        decode_heads_(MakeSample(config.n_heads, options.decode_head_stride)),
        prefill_heads_(MakeSample(config.n_heads, options.prefill_head_stride)),
        decode_chunk_(ChunkFloats(config.n_layers)) {
    decode_uniform_weight_ = decode_heads_.weight.front();
    for (double w : decode_heads_.weight) {
      if (w != decode_uniform_weight_) decode_uniform_weight_ = 0;
    }
    ResetEngineSide();
    {
      absl::MutexLock lock(&mu_);
      ResetWorkerSideLocked();
    }
    worker_ = std::thread([this] { Worker(); });
  }

  ~Impl() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    worker_.join();
  }

  const SimilarityEstimatorOptions& options() const { return options_; }
  int64_t ignored_blocks() const { return ignored_blocks_; }

  void OnAttention(const AttentionWeights& w) {
    const Clock::time_point t0 = Clock::now();
    if (w.layer < 0 || w.layer >= n_layers_ || w.n_heads != n_heads_ || w.num_queries < 1 ||
        w.query_begin < 0 || w.context_len != w.query_begin + w.num_queries ||
        w.context_len > seq_len_ || w.probs == nullptr) {
      ++ignored_blocks_;
      return;
    }
    if (w.num_queries == 1) {
      OnDecodeRow(w);
      const double dt = SecondsSince(t0);
      engine_seconds_ += dt;
      decode_engine_seconds_ += dt;
    } else {
      OnPrefillBlock(w);
      engine_seconds_ += SecondsSince(t0);
    }
  }

  // Where the engine may write a decode block of `layer`: the layer's slot
  // in decode_rows_, when the rows would be copied there whole anyway.
  float* DecodeBuffer(int layer, int position, int n_heads, int context_len) {
    if (layer < 0 || layer >= n_layers_ - 1 || n_heads != n_heads_ ||
        decode_heads_.index.size() != static_cast<size_t>(n_heads_) || position < 0 ||
        context_len != position + 1 || context_len > seq_len_) {
      return nullptr;  // the last layer (compared in place), head sampling, malformed
    }
    if (IsNewDecodeToken(position, layer) || context_len > decode_cap_) {
      // Rare (once per token at most): timed here, as OnAttention is.
      const Clock::time_point t0 = Clock::now();
      if (IsNewDecodeToken(position, layer)) StartDecodeToken(position);
      if (!decode_skip_ && context_len > decode_cap_) GrowDecodeBuffer(context_len);
      const double dt = SecondsSince(t0);
      engine_seconds_ += dt;
      decode_engine_seconds_ += dt;
    }
    return decode_skip_ ? nullptr : DecodeRows(layer);
  }

  SimilarityEstimate Finish() {
    {
      // A decode token whose last layer never came (a partial pass).
      const Clock::time_point t0 = Clock::now();
      CompareDecodeToken(nullptr);
      const double dt = SecondsSince(t0);
      engine_seconds_ += dt;
      decode_engine_seconds_ += dt;
    }
    SimilarityEstimate e = SimilarityEstimate::Empty(n_layers_, options_.edge_fraction);
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &Impl::IdleLocked));
      e.prefill_distance = prefill_d_;
      for (int l = 0; l < n_layers_; ++l) {
        e.first_mass_sum[l] = worker_first_[l];
        e.last_mass_sum[l] = worker_last_[l];
        e.mass_weight[l] = worker_mass_weight_[l];
      }
      e.background_seconds = background_seconds_;
      ResetWorkerSideLocked();
    }
    e.decode_distance = decode_d_;
    for (size_t i = 0; i < e.distance.size(); ++i) {
      e.distance[i] = e.prefill_distance[i] + e.decode_distance[i];
    }
    for (int l = 0; l < n_layers_; ++l) {
      e.first_mass_sum[l] += decode_first_[l];
      e.last_mass_sum[l] += decode_last_[l];
      e.mass_weight[l] += decode_mass_weight_[l];
    }
    e.prefill_tokens = prefill_tokens_;
    e.decode_tokens = decode_tokens_;
    e.rows_represented = rows_represented_;
    e.rows_compared = rows_compared_;
    e.sampled = sampled_;
    e.engine_thread_seconds = engine_seconds_;
    e.decode_engine_seconds = decode_engine_seconds_;
    e.blocked_seconds = blocked_seconds_;
    ResetEngineSide();
    return e;
  }

  void Reset() {
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &Impl::IdleLocked));
      ResetWorkerSideLocked();
    }
    ResetEngineSide();
  }

 private:
  // One prefill block of one layer, copied for the background thread:
  // rows (sampled heads x sampled queries x context_len).
  struct Task {
    int64_t slot = 0;
    int layer = 0;
    int query_begin = 0;
    int context_len = 0;
    std::shared_ptr<const Sample> queries;  // shared with the engine-side slot
    RowBuffer rows;
    bool closes_slot = false;  // the last layer of the slot: free it after this
    bool close_only = false;   // no rows: just free the slot (superseded)
  };

  // What the background thread keeps for one query block.
  struct WorkerSlot {
    std::vector<RowBuffer> layers;  // empty buffer = not reported yet
    std::vector<int> reported;      // layer indices, in arrival order
  };

  // The engine thread's view of an open query block.
  struct EngineSlot {
    int64_t id = 0;
    int num_queries = 0;
    std::vector<uint8_t> seen;
    int seen_count = 0;
    std::shared_ptr<const Sample> queries;
  };

  // A block of layers (reported order) against another, in the decode kernel.
  struct DecodeTile {
    int i0, j0, na, nb;
    TileFn kernel;
  };
  // A run of a decode token's flattened rows [begin, begin + len) whose
  // rows weigh `weight` each.
  struct DecodeSegment {
    size_t begin;
    int len;
    double weight;
  };

  // ----- decode (engine thread) -----

  // A new token (or the same layer again: a new pass over the token).
  bool IsNewDecodeToken(int pos, int layer) const {
    return pos != decode_pos_ || decode_tag_[layer] == decode_gen_ || decode_closed_;
  }

  void StartDecodeToken(int pos) {
    // The previous token is compared first if its last layer never came.
    CompareDecodeToken(nullptr);
    const int hs = static_cast<int>(decode_heads_.index.size());
    ++decode_gen_;
    decode_pos_ = pos;
    decode_closed_ = false;
    ++decode_tokens_;
    rows_represented_ += n_heads_;
    decode_skip_ = pos % options_.decode_token_stride != 0;
    if (!decode_skip_) rows_compared_ += hs;
    if (hs < n_heads_ || options_.decode_token_stride > 1) sampled_ = true;
  }

  void OnDecodeRow(const AttentionWeights& w) {
    const int pos = w.query_begin, ctx = w.context_len, l = w.layer;
    const int hs = static_cast<int>(decode_heads_.index.size());
    if (IsNewDecodeToken(pos, l)) StartDecodeToken(pos);
    decode_tag_[l] = decode_gen_;
    decode_stored_[l] = 0;
    if (decode_skip_) return;
    // A compared token stands for decode_token_stride tokens.
    const double token_weight = options_.decode_token_stride;
    if (ctx > decode_cap_) GrowDecodeBuffer(ctx);
    decode_ctx_ = ctx;
    // This layer's sampled rows as one contiguous (hs, ctx) block: the
    // engine's own buffer when every head is compared (a single query's rows
    // are contiguous there), kept in the layer's slot until the token's
    // layers are compared. The last layer's rows are compared in place, on
    // this call, and never copied; nor are rows the engine wrote into the
    // slot itself (DecodeBuffer).
    const bool last = l == n_layers_ - 1;
    const float* mine = w.probs;
    if (hs == n_heads_ && w.probs == DecodeRows(l)) {
      decode_stored_[l] = 1;
    } else if (hs < n_heads_) {
      float* gathered = DecodeRows(l);
      for (int i = 0; i < hs; ++i) {
        std::memcpy(gathered + static_cast<size_t>(i) * ctx, w.row(decode_heads_.index[i], 0),
                    sizeof(float) * ctx);
      }
      mine = gathered;
      decode_stored_[l] = 1;
    } else if (!last) {
      std::memcpy(DecodeRows(l), w.probs, sizeof(float) * hs * ctx);
      decode_stored_[l] = 1;
    }
    const int window = std::min(ctx, EdgeWindow(options_.edge_fraction, ctx));
    const int last_begin = std::max(window, ctx - window);
    if (decode_uniform_weight_ > 0) {
      const double weight = token_weight * decode_uniform_weight_;
      decode_first_[l] += weight * SumWindows(mine, hs, ctx, 0, window);
      decode_last_[l] += weight * SumWindows(mine, hs, ctx, last_begin, ctx - last_begin);
    } else {
      for (int i = 0; i < hs; ++i) {
        const float* row = mine + static_cast<size_t>(i) * ctx;
        const double weight = token_weight * decode_heads_.weight[i];
        decode_first_[l] += weight * SumWindows(row, 1, ctx, 0, window);
        decode_last_[l] += weight * SumWindows(row, 1, ctx, last_begin, ctx - last_begin);
      }
    }
    decode_mass_weight_[l] += token_weight * n_heads_;
    // The engine reports layers in order: the last one completes the token.
    if (last) CompareDecodeToken(mine);
  }

  // Adds the squared distances of every pair of the current token's
  // reported layers to decode_d_, once per token: the stored layers, and
  // `last_rows` for the last layer when it is reported on this call. Later
  // reports of the same position start a new token.
  void CompareDecodeToken(const float* last_rows) {
    if (decode_closed_ || decode_skip_ || decode_pos_ < 0) return;
    decode_closed_ = true;
    decode_layers_.clear();
    decode_ptrs_.clear();
    for (int j = 0; j < n_layers_; ++j) {
      if (decode_tag_[j] != decode_gen_) continue;
      const float* rows = decode_stored_[j]                              ? DecodeRows(j)
                          : (j == n_layers_ - 1 && last_rows != nullptr) ? last_rows
                                                                         : nullptr;
      if (rows == nullptr) continue;
      decode_layers_.push_back(j);
      decode_ptrs_.push_back(rows);
    }
    const int m = static_cast<int>(decode_layers_.size());
    if (m < 2) return;
    const int ctx = decode_ctx_;
    const int hs = static_cast<int>(decode_heads_.index.size());

    // Tiles: blocks of kTile layers against themselves and later blocks.
    decode_tiles_.clear();
    for (int i0 = 0; i0 < m; i0 += kTile) {
      const int na = std::min(kTile, m - i0);
      for (int j0 = i0; j0 < m; j0 += kTile) {
        const int nb = std::min(kTile, m - j0);
        if (j0 == i0 && na < 2) continue;
        decode_tiles_.push_back(DecodeTile{i0, j0, na, nb, TileKernel(na, nb, j0 == i0)});
      }
    }
    // Segments of equal weight: all heads' rows at once when the heads
    // weigh the same, else head by head; each summed in float lanes over at
    // most kDecodeGroupFloats, then in double.
    decode_segments_.clear();
    auto add_segment = [&](size_t begin, int len, double weight) {
      for (int g = 0; g < len; g += kDecodeGroupFloats) {
        decode_segments_.push_back(
            DecodeSegment{begin + g, std::min(kDecodeGroupFloats, len - g), weight});
      }
    };
    if (decode_uniform_weight_ > 0) {
      add_segment(0, hs * ctx, decode_uniform_weight_);
    } else {
      for (int i = 0; i < hs; ++i) {
        add_segment(static_cast<size_t>(i) * ctx, ctx, decode_heads_.weight[i]);
      }
    }
    decode_sums_.resize(static_cast<size_t>(m) * m);
    decode_partial_.assign(static_cast<size_t>(m) * m, 0.0);
    // Each pair's sum goes through the same chunks in the same order
    // whichever tiles a thread runs, so D does not depend on the pool.
    auto body = [&](int64_t tb, int64_t te) {
      const float* pa[kTile];
      const float* pb[kTile];
      for (const DecodeSegment& seg : decode_segments_) {
        for (int64_t t = tb; t < te; ++t) {
          const DecodeTile& tile = decode_tiles_[t];
          for (int i = 0; i < tile.na; ++i) {
            for (int j = 0; j < tile.nb; ++j) {
              decode_sums_[(tile.i0 + i) * m + tile.j0 + j] = LaneSums{};
            }
          }
        }
        for (int c = 0; c < seg.len; c += decode_chunk_) {
          const int len = std::min(decode_chunk_, seg.len - c);
          const size_t off = seg.begin + c;
          for (int64_t t = tb; t < te; ++t) {
            const DecodeTile& tile = decode_tiles_[t];
            for (int i = 0; i < tile.na; ++i) pa[i] = decode_ptrs_[tile.i0 + i] + off;
            for (int j = 0; j < tile.nb; ++j) pb[j] = decode_ptrs_[tile.j0 + j] + off;
            tile.kernel(pa, pb, len, &decode_sums_[tile.i0 * m + tile.j0], m);
          }
        }
        for (int64_t t = tb; t < te; ++t) {
          const DecodeTile& tile = decode_tiles_[t];
          for (int i = 0; i < tile.na; ++i) {
            for (int j = 0; j < tile.nb; ++j) {
              const int a = tile.i0 + i, b = tile.j0 + j;
              if (a < b)
                decode_partial_[a * m + b] += seg.weight * LaneTotal(decode_sums_[a * m + b]);
            }
          }
        }
      }
    };
    const int64_t tiles = static_cast<int64_t>(decode_tiles_.size());
    const int64_t work = static_cast<int64_t>(hs) * ctx * m * (m - 1) / 2;
    if (options_.decode_pool != nullptr && tiles > 1 && work >= kMinParallelElements) {
      options_.decode_pool->ParallelFor(tiles, body, 1);
    } else {
      body(0, tiles);
    }
    const double token_weight = options_.decode_token_stride;
    for (int a = 0; a < m; ++a) {
      for (int b = a + 1; b < m; ++b) {
        const double d = token_weight * decode_partial_[a * m + b];
        const size_t la = decode_layers_[a], lb = decode_layers_[b];
        decode_d_[la * n_layers_ + lb] += d;
        decode_d_[lb * n_layers_ + la] += d;
      }
    }
  }

  // Layer `layer`'s rows of the current token: (sampled head, context),
  // contiguous, row stride = the token's context length.
  float* DecodeRows(int layer) {
    return decode_rows_.data() +
           static_cast<size_t>(layer) * decode_heads_.index.size() * decode_cap_;
  }

  void GrowDecodeBuffer(int ctx) {
    const int new_cap = std::max(ctx, 2 * decode_cap_);
    const size_t hs = decode_heads_.index.size();
    AlignedBuffer<float> grown(static_cast<size_t>(n_layers_) * hs * new_cap);
    for (int l = 0; l < n_layers_; ++l) {
      // Only the current token's rows matter; a layer's block is contiguous.
      if (decode_tag_[l] != decode_gen_ || !decode_stored_[l]) continue;
      std::memcpy(grown.data() + l * hs * new_cap, DecodeRows(l), sizeof(float) * hs * decode_cap_);
    }
    decode_rows_ = std::move(grown);
    decode_cap_ = new_cap;
  }

  // ----- prefill (engine thread side) -----

  void OnPrefillBlock(const AttentionWeights& w) {
    EngineSlot* slot = nullptr;
    auto it = open_slots_.find(w.query_begin);
    if (it != open_slots_.end() &&
        (it->second.num_queries != w.num_queries || it->second.seen[w.layer])) {
      // Superseded (the same queries run again): drop the old block's rows.
      Task close;
      close.slot = it->second.id;
      close.close_only = true;
      Enqueue(std::move(close), 0);
      open_slots_.erase(it);
      it = open_slots_.end();
    }
    if (it == open_slots_.end()) {
      EngineSlot fresh;
      fresh.id = next_slot_id_++;
      fresh.num_queries = w.num_queries;
      fresh.seen.assign(n_layers_, 0);
      fresh.queries = std::make_shared<const Sample>(
          MakeSample(w.num_queries, QueryStride(w.num_queries, w.context_len)));
      const int qs = static_cast<int>(fresh.queries->index.size());
      const int hs = static_cast<int>(prefill_heads_.index.size());
      prefill_tokens_ += w.num_queries;
      rows_represented_ += static_cast<double>(n_heads_) * w.num_queries;
      rows_compared_ += static_cast<int64_t>(hs) * qs;
      if (qs < w.num_queries || hs < n_heads_) sampled_ = true;
      it = open_slots_.emplace(w.query_begin, std::move(fresh)).first;
    }
    slot = &it->second;
    slot->seen[w.layer] = 1;
    ++slot->seen_count;

    Task task;
    task.slot = slot->id;
    task.layer = w.layer;
    task.query_begin = w.query_begin;
    task.context_len = w.context_len;
    task.queries = slot->queries;
    task.closes_slot = slot->seen_count == n_layers_;
    const Sample& qs = *slot->queries;
    const size_t row = w.context_len;
    task.rows = TakeBuffer(prefill_heads_.index.size() * qs.index.size() * row);
    if (qs.index.size() == static_cast<size_t>(w.num_queries) &&
        prefill_heads_.index.size() == static_cast<size_t>(n_heads_)) {
      std::memcpy(task.rows.data(), w.probs,
                  sizeof(float) * task.rows.size());  // the hand-off copy
    } else {
      float* out = task.rows.data();
      for (int h : prefill_heads_.index) {
        for (int q : qs.index) {
          std::memcpy(out, w.row(h, q), sizeof(float) * row);
          out += row;
        }
      }
    }
    const size_t bytes = sizeof(float) * task.rows.size();
    if (task.closes_slot) open_slots_.erase(it);  // the task keeps its Sample alive
    Enqueue(std::move(task), bytes);
  }

  // Smallest stride (>= the configured one, doubling) that keeps one block's
  // rows for all but the last layer within max_slot_bytes.
  int QueryStride(int num_queries, int context_len) const {
    int stride = options_.prefill_query_stride;
    const size_t per_query = sizeof(float) * prefill_heads_.index.size() * context_len *
                             static_cast<size_t>(std::max(1, n_layers_ - 1));
    while (stride < num_queries &&
           per_query * ((num_queries + stride - 1) / stride) > options_.max_slot_bytes) {
      stride *= 2;
    }
    return std::min(stride, num_queries);
  }

  void Enqueue(Task task, size_t bytes) {
    absl::MutexLock lock(&mu_);
    // Backpressure only while the worker has queued work to catch up on;
    // rows parked in open slots are freed by later layers, not by waiting.
    auto room = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return queue_.empty() || pending_bytes_ + bytes <= options_.max_pending_bytes;
    };
    if (!room()) {
      const Clock::time_point t0 = Clock::now();
      mu_.Await(absl::Condition(&room));
      blocked_seconds_ += SecondsSince(t0);
    }
    pending_bytes_ += bytes;
    queue_.push_back(std::move(task));
  }

  // ----- background thread -----

  bool IdleLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return queue_.empty() && !busy_; }
  bool HasWorkLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !queue_.empty() || stop_; }

  void Worker() {
    for (;;) {
      Task task;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(this, &Impl::HasWorkLocked));
        if (stop_) return;
        task = std::move(queue_.front());
        queue_.pop_front();
        busy_ = true;
      }
      const Clock::time_point t0 = Clock::now();
      std::vector<RowBuffer> released;
      if (task.close_only) {
        CloseSlot(task.slot, released);
      } else {
        Process(task, released);
      }
      absl::MutexLock lock(&mu_);
      for (RowBuffer& b : released) {
        pending_bytes_ -= std::min(pending_bytes_, sizeof(float) * b.size());
        // Keep buffers for reuse: fresh memory costs a page fault per 4 KiB
        // on the engine thread, more than the copy itself.
        if (spare_bytes_ + sizeof(float) * b.capacity <= options_.max_slot_bytes) {
          spare_bytes_ += sizeof(float) * b.capacity;
          spare_.push_back(std::move(b));
        }
      }
      background_seconds_ += SecondsSince(t0);
      busy_ = false;
    }
  }

  void CloseSlot(int64_t id, std::vector<RowBuffer>& released) {
    auto it = worker_slots_.find(id);
    if (it == worker_slots_.end()) return;
    for (RowBuffer& b : it->second.layers) {
      if (b.data() != nullptr) released.push_back(std::move(b));
    }
    worker_slots_.erase(it);
  }

  // A buffer of `n` floats: the smallest spare that fits, else a new one.
  RowBuffer TakeBuffer(size_t n) {
    RowBuffer out;
    {
      absl::MutexLock lock(&mu_);
      size_t best = spare_.size();
      for (size_t i = 0; i < spare_.size(); ++i) {
        if (spare_[i].capacity >= n &&
            (best == spare_.size() || spare_[i].capacity < spare_[best].capacity)) {
          best = i;
        }
      }
      if (best < spare_.size()) {
        out = std::move(spare_[best]);
        spare_[best] = std::move(spare_.back());
        spare_.pop_back();
        spare_bytes_ -= sizeof(float) * out.capacity;
      }
    }
    out.Allocate(n);
    return out;
  }

  // Runs on the worker only; the worker-side accumulators are touched by no
  // other thread until Finish() has seen the worker idle.
  void Process(Task& task, std::vector<RowBuffer>& released) {
    WorkerSlot& slot = worker_slots_[task.slot];
    if (slot.layers.empty()) slot.layers.resize(n_layers_);
    const Sample& qs = *task.queries;
    const int nq = static_cast<int>(qs.index.size());
    const int nh = static_cast<int>(prefill_heads_.index.size());
    const size_t row = task.context_len;
    const float* mine = task.rows.data();
    const int l = task.layer;
    const int reported = static_cast<int>(slot.reported.size());
    for (int k0 = 0; k0 < reported; k0 += kDistanceGroup) {
      const int count = std::min(kDistanceGroup, reported - k0);
      double sums[kDistanceGroup] = {};
      const float* theirs[kDistanceGroup];
      float d[kDistanceGroup];
      for (int hi = 0; hi < nh; ++hi) {
        for (int qi = 0; qi < nq; ++qi) {
          const size_t r = (static_cast<size_t>(hi) * nq + qi) * row;
          // Causal rows are zero past their own position: compare only the
          // valid keys.
          const int len = task.query_begin + qs.index[qi] + 1;
          for (int c = 0; c < count; ++c) theirs[c] = slot.layers[slot.reported[k0 + c]].data() + r;
          SquaredDistanceGroup(mine + r, theirs, count, len, d);
          const double weight = prefill_heads_.weight[hi] * qs.weight[qi];
          for (int c = 0; c < count; ++c) sums[c] += weight * d[c];
        }
      }
      for (int c = 0; c < count; ++c) {
        const int j = slot.reported[k0 + c];
        prefill_d_[static_cast<size_t>(l) * n_layers_ + j] += sums[c];
        prefill_d_[static_cast<size_t>(j) * n_layers_ + l] += sums[c];
      }
    }
    for (int hi = 0; hi < nh; ++hi) {
      for (int qi = 0; qi < nq; ++qi) {
        const size_t r = (static_cast<size_t>(hi) * nq + qi) * row;
        const int len = task.query_begin + qs.index[qi] + 1;
        AddEdgeMass(mine + r, len, options_.edge_fraction,
                    prefill_heads_.weight[hi] * qs.weight[qi], worker_first_[l], worker_last_[l]);
      }
    }
    for (int qi = 0; qi < nq; ++qi)
      worker_mass_weight_[l] += static_cast<double>(n_heads_) * qs.weight[qi];

    if (task.closes_slot) {
      // The last layer: nothing will be compared with this block again.
      released.push_back(std::move(task.rows));
      CloseSlot(task.slot, released);
      return;
    }
    slot.layers[l] = std::move(task.rows);
    slot.reported.push_back(l);
  }

  void ResetEngineSide() {
    decode_d_.assign(static_cast<size_t>(n_layers_) * n_layers_, 0.0);
    decode_first_.assign(n_layers_, 0.0);
    decode_last_.assign(n_layers_, 0.0);
    decode_mass_weight_.assign(n_layers_, 0.0);
    decode_tag_.assign(n_layers_, -1);
    decode_stored_.assign(n_layers_, 0);
    decode_pos_ = -1;
    decode_closed_ = false;
    decode_skip_ = false;
    ++decode_gen_;
    prefill_tokens_ = decode_tokens_ = 0;
    rows_represented_ = 0;
    rows_compared_ = 0;
    sampled_ = false;
    engine_seconds_ = 0;
    decode_engine_seconds_ = 0;
    blocked_seconds_ = 0;
    open_slots_.clear();
  }

  void ResetWorkerSideLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    prefill_d_.assign(static_cast<size_t>(n_layers_) * n_layers_, 0.0);
    worker_first_.assign(n_layers_, 0.0);
    worker_last_.assign(n_layers_, 0.0);
    worker_mass_weight_.assign(n_layers_, 0.0);
    worker_slots_.clear();
    pending_bytes_ = 0;
    background_seconds_ = 0;
  }

  // Below this many compared floats a decode token is not worth waking the
  // pool for.
  static constexpr int64_t kMinParallelElements = 16 * 1024;
  // Floats summed in float lanes before a decode pair's sum moves to double
  // (each lane adds at most 512 terms).
  static constexpr int kDecodeGroupFloats = 4096;

  // Floats of each layer's rows per pass of the decode kernel: every
  // layer's chunk together within ~24 KB, so they stay in L1 while all
  // pairs are compared. A multiple of kLanes.
  static int ChunkFloats(int n_layers) {
    const int c = std::clamp(6144 / std::max(1, n_layers), 128, 2048);
    return c - c % kLanes;
  }

  const SimilarityEstimatorOptions options_;
  const int n_layers_;
  const int n_heads_;
  const int seq_len_;
  const Sample decode_heads_;
  const Sample prefill_heads_;

  // Engine thread only.
  int64_t ignored_blocks_ = 0;
  std::vector<double> decode_d_;
  std::vector<double> decode_first_, decode_last_, decode_mass_weight_;
  AlignedBuffer<float> decode_rows_;  // (layer, [sampled head, context] <= decode_cap_ per head)
  // The common weight of every sampled decode head when they are all equal
  // (always without sampling), else 0.
  double decode_uniform_weight_ = 0;
  int decode_cap_ = 0;
  std::vector<int64_t> decode_tag_;  // generation whose rows a layer holds
  int64_t decode_gen_ = 0;
  int decode_pos_ = -1;
  bool decode_skip_ = false;            // the current decode token is not sampled
  std::vector<uint8_t> decode_stored_;  // rows of the layer are in decode_rows_
  bool decode_closed_ = false;          // the current token's layers were compared
  int decode_ctx_ = 0;                  // context length of the current token
  const int decode_chunk_;              // floats per layer per kernel pass (see ChunkFloats)
  // Scratch of CompareDecodeToken, kept between tokens.
  std::vector<int> decode_layers_;
  std::vector<const float*> decode_ptrs_;
  std::vector<DecodeTile> decode_tiles_;
  std::vector<DecodeSegment> decode_segments_;
  std::vector<LaneSums> decode_sums_;                // (m, m) lane sums of the current segment
  std::vector<double> decode_partial_;               // (m, m) weighted sums of the token
  absl::flat_hash_map<int, EngineSlot> open_slots_;  // by query_begin
  int64_t next_slot_id_ = 0;
  int64_t prefill_tokens_ = 0, decode_tokens_ = 0;
  double rows_represented_ = 0;
  int64_t rows_compared_ = 0;
  bool sampled_ = false;
  double engine_seconds_ = 0;
  double decode_engine_seconds_ = 0;
  double blocked_seconds_ = 0;  // written under mu_ by the engine thread only

  absl::Mutex mu_;
  std::deque<Task> queue_ ABSL_GUARDED_BY(mu_);
  // Copy buffers kept for reuse, at most max_slot_bytes (across turns).
  std::vector<RowBuffer> spare_ ABSL_GUARDED_BY(mu_);
  size_t spare_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  size_t pending_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool busy_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  double background_seconds_ ABSL_GUARDED_BY(mu_) = 0;
  // Worker-owned while it runs; read and reset by the engine thread under
  // mu_ once the worker is idle.
  std::vector<double> prefill_d_;
  std::vector<double> worker_first_, worker_last_, worker_mass_weight_;
  absl::flat_hash_map<int64_t, WorkerSlot> worker_slots_;

  std::thread worker_;
};

// ---------------------------------------------------------------------------
// SimilarityEstimator

absl::StatusOr<std::unique_ptr<SimilarityEstimator>> SimilarityEstimator::Create(
    const ModelConfig& config, const SimilarityEstimatorOptions& options) {
  if (auto s = config.Validate(); !s.ok()) return s;
  if (auto s = options.Validate(); !s.ok()) return s;
  return std::unique_ptr<SimilarityEstimator>(
      new SimilarityEstimator(std::make_unique<Impl>(config, options)));
}

SimilarityEstimator::SimilarityEstimator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SimilarityEstimator::~SimilarityEstimator() = default;

void SimilarityEstimator::OnAttention(const AttentionWeights& weights) {
  impl_->OnAttention(weights);
}
float* SimilarityEstimator::DecodeBuffer(int layer, int position, int n_heads, int context_len) {
  return impl_->DecodeBuffer(layer, position, n_heads, context_len);
}
SimilarityEstimate SimilarityEstimator::Finish() { return impl_->Finish(); }
void SimilarityEstimator::Reset() { impl_->Reset(); }
int64_t SimilarityEstimator::ignored_blocks() const { return impl_->ignored_blocks(); }
const SimilarityEstimatorOptions& SimilarityEstimator::options() const { return impl_->options(); }

}  // namespace krul
