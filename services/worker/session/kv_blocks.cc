#include "worker/session/kv_blocks.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "krul/kvformat/manifest.h"

namespace krul::worker {
namespace {

absl::StatusOr<DType> FromBlockDType(BlockDType d) {
  switch (d) {
    case BlockDType::kF32:
      return DType::kF32;
    case BlockDType::kF16:
      return DType::kF16;
    case BlockDType::kBF16:
      return DType::kBF16;
    default:
      return absl::DataLossError("KV block has a non-float dtype");
  }
}

bool Covers(const v1::BlockRef& ref, std::span<const int> layers, int begin, int end) {
  const int b0 = static_cast<int>(ref.token_begin());
  const int b1 = b0 + static_cast<int>(ref.num_tokens());
  if (b1 <= begin || b0 >= end) return false;
  for (int l : layers) {
    if (static_cast<uint32_t>(l) == ref.layer() ||
        (ref.layer_pair() != kNoLayerPair && static_cast<uint32_t>(l) == ref.layer_pair())) {
      return true;
    }
  }
  return false;
}

class StoreKvSource final : public KvSource {
 public:
  StoreKvSource(ConversationStore* store, v1::Manifest manifest, const KvShape& shape,
                absl::Duration per_fetch, std::vector<uint32_t> prefetch, StoreSourceStats* stats)
      : store_(store),
        manifest_(std::move(manifest)),
        shape_(shape),
        per_fetch_(per_fetch),
        prefetch_(std::move(prefetch)),
        stats_(stats) {
    StartPrefetch();
  }

  ~StoreKvSource() override {
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
    }
    if (reader_.joinable()) reader_.join();
    if (stats_ != nullptr) {
      absl::MutexLock lock(&mu_);
      stats_->first_block_seconds = first_block_seconds_;
      stats_->blocks_seconds = last_block_seconds_;
      stats_->wait_seconds = wait_seconds_;
      stats_->decode_seconds = decode_seconds_;
    }
  }

  absl::StatusOr<size_t> Fetch(std::span<const int> layers, int begin, int end,
                               BackendKvCache& cache) override {
    if (begin >= end) return size_t{0};
    std::vector<uint32_t> wanted;
    for (const v1::BlockRef& ref : manifest_.blocks()) {
      if (Covers(ref, layers, begin, end)) wanted.push_back(ref.index());
    }
    StartPrefetch();
    // Blocks of this step, from the prefetch or read now.
    std::vector<std::pair<uint32_t, std::shared_ptr<const std::string>>> blocks;
    std::vector<uint32_t> on_demand;
    const absl::Time deadline = absl::Now() + per_fetch_;
    const auto wait_start = Clock::now();
    for (uint32_t index : wanted) {
      if (!std::binary_search(prefetch_.begin(), prefetch_.end(), index)) {
        on_demand.push_back(index);
        continue;
      }
      absl::MutexLock lock(&mu_);
      auto arrived = [this, index]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return arrived_.contains(index) || !reader_status_.ok() || reader_done_;
      };
      if (!mu_.AwaitWithDeadline(absl::Condition(&arrived), deadline)) {
        return absl::DeadlineExceededError(
            absl::StrCat("KV block ", index, " did not arrive in time"));
      }
      auto it = arrived_.find(index);
      if (it == arrived_.end()) {
        if (!reader_status_.ok()) return reader_status_;
        return absl::NotFoundError(absl::StrCat("KV block ", index, " is missing"));
      }
      blocks.emplace_back(index, it->second);
    }
    if (!on_demand.empty()) {
      absl::Status s = store_->ReadBlocks(
          manifest_, on_demand,
          [&blocks](uint32_t index, std::string encoded) {
            blocks.emplace_back(index, std::make_shared<const std::string>(std::move(encoded)));
            return absl::OkStatus();
          },
          deadline);
      if (!s.ok()) return s;
    }
    const auto decode_start = Clock::now();
    wait_seconds_ += Seconds(wait_start, decode_start);
    struct DecodeClock {  // adds the decode time however Fetch returns
      double& total;
      Clock::time_point start;
      ~DecodeClock() { total += Seconds(start, Clock::now()); }
    } decode_clock{decode_seconds_, decode_start};

    size_t bytes = 0;
    // Covered token intervals per requested layer, to find holes.
    std::vector<std::vector<std::pair<int, int>>> covered(layers.size());
    for (const auto& [index, encoded] : blocks) {
      // A prefetched block crossed the wire once, however many steps decode
      // it (a re-planned restore can split one between a pair's head and
      // tail); a block read on demand crossed it again.
      const bool prefetched = std::binary_search(prefetch_.begin(), prefetch_.end(), index);
      if (!prefetched || counted_.insert(index).second) bytes += encoded->size();
      // The store verified the block against the manifest (checksum,
      // layer, range) before handing it over: only the header is decoded.
      auto header = DecodeBlockHeader(*encoded);
      if (!header.ok()) return header.status();
      const DecodedBlock decoded{
          *header, std::string_view(*encoded).substr(kBlockHeaderBytes, header->payload_bytes)};
      if (decoded.payload.size() != header->payload_bytes) {
        return absl::DataLossError(absl::StrCat("KV block ", index, " is truncated"));
      }
      auto segment = SegmentFromBlock(decoded);
      if (!segment.ok()) return segment.status();
      for (size_t j = 0; j < layers.size(); ++j) {
        const int l = layers[j];
        if (!segment->Covers(l)) continue;
        const int from = std::max(begin, segment->begin);
        const int to = std::min(end, segment->end);
        if (from >= to) continue;
        if (auto s = DecodeSegment(*segment, shape_, l, from, to, cache); !s.ok()) {
          // A segment that passed its checksum but does not decode was
          // written wrong: as unusable as a corrupted one.
          return absl::DataLossError(absl::StrCat("KV block ", index, ": ", s.message()));
        }
        covered[j].emplace_back(from, to);
      }
    }
    for (size_t j = 0; j < layers.size(); ++j) {
      std::sort(covered[j].begin(), covered[j].end());
      int reached = begin;
      for (const auto& [from, to] : covered[j]) {
        if (from > reached) break;
        reached = std::max(reached, to);
      }
      if (reached < end) {
        return absl::NotFoundError(absl::StrCat("missing KV blocks: layer ", layers[j], " tokens [",
                                                reached, ", ", end,
                                                ") are not in the stored version"));
      }
    }
    return bytes;
  }

 private:
  using Clock = std::chrono::steady_clock;
  static double Seconds(Clock::time_point from, Clock::time_point to) {
    return std::chrono::duration<double>(to - from).count();
  }

  void StartPrefetch() {
    if (prefetch_.empty() || reader_.joinable()) return;
    const auto start = Clock::now();
    reader_ = std::thread([this, start] {
      absl::Status s = store_->ReadBlocks(
          manifest_, prefetch_,
          [this, start](uint32_t index, std::string encoded) {
            auto block = std::make_shared<const std::string>(std::move(encoded));
            const double at = Seconds(start, Clock::now());
            absl::MutexLock lock(&mu_);
            if (cancelled_) return absl::CancelledError("restore ended");
            if (arrived_.empty()) first_block_seconds_ = at;
            last_block_seconds_ = at;
            arrived_[index] = std::move(block);
            return absl::OkStatus();
          },
          absl::Now() + per_fetch_);
      absl::MutexLock lock(&mu_);
      reader_status_ = s;
      reader_done_ = true;
    });
  }

  ConversationStore* store_;
  const v1::Manifest manifest_;
  const KvShape shape_;
  const absl::Duration per_fetch_;
  const std::vector<uint32_t> prefetch_;  // sorted
  StoreSourceStats* const stats_;
  absl::flat_hash_set<uint32_t> counted_;  // prefetched blocks already reported (Fetch only)
  double wait_seconds_ = 0;                // Fetch only
  double decode_seconds_ = 0;              // Fetch only
  std::thread reader_;
  absl::Mutex mu_;
  absl::flat_hash_map<uint32_t, std::shared_ptr<const std::string>> arrived_ ABSL_GUARDED_BY(mu_);
  absl::Status reader_status_ ABSL_GUARDED_BY(mu_);
  bool reader_done_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  double first_block_seconds_ ABSL_GUARDED_BY(mu_) = 0;
  double last_block_seconds_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace

absl::StatusOr<std::string> EncodeSegmentBlock(const KvSegment& segment, const KvShape& shape) {
  if (auto s = ValidateSegment(segment, shape); !s.ok()) return s;
  BlockHeader h;
  h.dtype = ToBlockDType(segment.dtype);
  h.layer = static_cast<uint32_t>(segment.layer);
  h.token_begin = static_cast<uint32_t>(segment.begin);
  h.num_tokens = static_cast<uint32_t>(segment.num_tokens());
  const size_t elem = DTypeSize(segment.dtype);
  if (segment.kind == SegmentKind::kPlain) {
    h.layout = BlockLayout::kKvTokenMajor;
    h.rank = 3;
    h.dims = {2, static_cast<uint32_t>(segment.num_tokens()), static_cast<uint32_t>(shape.kv_dim()),
              0};
  } else {
    if (segment.payload.size() % elem != 0) {
      return absl::InvalidArgumentError("merged segment payload is not a whole number of elements");
    }
    h.layout = BlockLayout::kMergedPair;
    h.layer_pair = static_cast<uint32_t>(segment.partner);
    h.rank = 1;
    h.dims = {static_cast<uint32_t>(segment.payload.size() / elem), 0, 0, 0};
  }
  return EncodeBlock(h, std::string_view(reinterpret_cast<const char*>(segment.payload.data()),
                                         segment.payload.size()));
}

absl::StatusOr<KvSegment> SegmentFromBlock(const DecodedBlock& block) {
  const BlockHeader& h = block.header;
  auto dtype = FromBlockDType(h.dtype);
  if (!dtype.ok()) return dtype.status();
  KvSegment s;
  s.dtype = *dtype;
  s.layer = static_cast<int>(h.layer);
  s.begin = static_cast<int>(h.token_begin);
  s.end = static_cast<int>(h.token_begin + h.num_tokens);
  if (h.layout == BlockLayout::kKvTokenMajor) {
    s.kind = SegmentKind::kPlain;
    s.partner = -1;
  } else if (h.layout == BlockLayout::kMergedPair) {
    s.kind = SegmentKind::kMerged;
    s.partner = static_cast<int>(h.layer_pair);
  } else {
    return absl::DataLossError("KV block has a layout that holds no KV segment");
  }
  s.payload.assign(block.payload.begin(), block.payload.end());
  return s;
}

absl::StatusOr<StoredVersion> BuildStoredVersion(const v1::ConversationKey& key,
                                                 const std::string& model_id,
                                                 std::string record_bytes, const CompressedKv& kv) {
  StoredVersion v;
  v1::Manifest& m = v.manifest;
  *m.mutable_key() = key;
  m.set_model_id(model_id);
  m.set_n_layers(static_cast<uint32_t>(kv.shape.n_layers));
  m.set_plan(std::move(record_bytes));
  m.set_history_tokens(static_cast<uint32_t>(kv.num_tokens));
  for (int l = 0; l < kv.shape.n_layers; ++l) {
    v1::LayerRange* r = m.add_stored_ranges();
    r->set_layer(static_cast<uint32_t>(l));
    const int begin = kv.stored_begin.empty() ? 0 : kv.stored_begin[l];
    r->set_token_begin(static_cast<uint32_t>(begin));
    r->set_token_end(static_cast<uint32_t>(kv.num_tokens));
  }
  v.blocks.reserve(kv.segments.size());
  for (const KvSegment& segment : kv.segments) {
    auto encoded = EncodeSegmentBlock(segment, kv.shape);
    if (!encoded.ok()) return encoded.status();
    auto ref = MakeBlockRef(static_cast<uint32_t>(v.blocks.size()), *encoded);
    if (!ref.ok()) return ref.status();
    *m.add_blocks() = *std::move(ref);
    v.blocks.push_back(*std::move(encoded));
  }
  return v;
}

std::vector<uint32_t> BlocksForLoads(const v1::Manifest& manifest,
                                     const std::vector<LoadStep>& loads) {
  std::vector<uint32_t> out;
  for (const v1::BlockRef& ref : manifest.blocks()) {
    for (const LoadStep& step : loads) {
      if (Covers(ref, step.write_layers, step.begin, step.end)) {
        out.push_back(ref.index());
        break;
      }
    }
  }
  return out;
}

std::unique_ptr<KvSource> MakeStoreKvSource(ConversationStore* store, v1::Manifest manifest,
                                            const KvShape& shape, absl::Duration per_fetch,
                                            std::vector<uint32_t> prefetch,
                                            StoreSourceStats* stats) {
  std::sort(prefetch.begin(), prefetch.end());
  prefetch.erase(std::unique(prefetch.begin(), prefetch.end()), prefetch.end());
  return std::make_unique<StoreKvSource>(store, std::move(manifest), shape, per_fetch,
                                         std::move(prefetch), stats);
}

}  // namespace krul::worker
