#include "krul/restore/kv_source.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace krul {
namespace {

using Clock = std::chrono::steady_clock;

// Pro-rata stored bytes of the segments a fetch reads, after validating
// the request against `kv`.
absl::StatusOr<size_t> BytesRead(const CompressedKv& kv, std::span<const int> layers, int begin,
                                 int end) {
  if (layers.empty() || layers.size() > 2) {
    return absl::InvalidArgumentError("a fetch names one layer or one shared pair");
  }
  if (begin < 0 || end > kv.num_tokens || begin >= end) {
    return absl::InvalidArgumentError(absl::StrCat("token range [", begin, ", ", end,
                                                   ") is outside the stored history of ",
                                                   kv.num_tokens, " tokens"));
  }
  // Segments read, each counted once even when it serves both layers.
  std::vector<size_t> read;
  for (int layer : layers) {
    if (layer < 0 || layer >= kv.shape.n_layers) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " is out of range"));
    }
    for (size_t i : kv.SegmentsFor(layer)) {
      const KvSegment& s = kv.segments[i];
      if (s.end > begin && s.begin < end) read.push_back(i);
    }
  }
  std::sort(read.begin(), read.end());
  read.erase(std::unique(read.begin(), read.end()), read.end());
  double bytes = 0;
  for (size_t i : read) {
    const KvSegment& s = kv.segments[i];
    const int overlap = std::min(end, s.end) - std::max(begin, s.begin);
    bytes += static_cast<double>(s.stored_bytes()) * overlap / s.num_tokens();
  }
  return static_cast<size_t>(std::llround(bytes));
}

class InProcessKvSource final : public KvSource {
 public:
  explicit InProcessKvSource(std::shared_ptr<const CompressedKv> kv) : kv_(std::move(kv)) {}

  absl::StatusOr<size_t> Fetch(std::span<const int> layers, int begin, int end,
                               BackendKvCache& cache) override {
    auto bytes = BytesRead(*kv_, layers, begin, end);
    if (!bytes.ok()) return bytes.status();
    for (int layer : layers) {
      if (auto st = kv_->DecompressLayer(layer, begin, end, cache); !st.ok()) return st;
    }
    return *bytes;
  }

 private:
  const std::shared_ptr<const CompressedKv> kv_;
};

class LinkPacedKvSource final : public KvSource {
 public:
  LinkPacedKvSource(std::unique_ptr<KvSource> inner, const LinkModel& link, LinkPacingStats* stats)
      : inner_(std::move(inner)), link_(link), stats_(stats) {}

  absl::StatusOr<size_t> Fetch(std::span<const int> layers, int begin, int end,
                               BackendKvCache& cache) override {
    const auto start = Clock::now();
    if (!started_) {
      started_ = true;
      stream_start_ = start;
    }
    auto bytes = inner_->Fetch(layers, begin, end, cache);
    if (!bytes.ok()) return bytes;
    const auto fetched = Clock::now();
    // One stream: its bytes flow from the first fetch on, so this fetch
    // completes no earlier than latency + (bytes so far) / bandwidth after
    // the stream started. The real work above overlaps the emulated
    // transfer, as decoding would overlap a real transfer's tail.
    streamed_bytes_ += static_cast<double>(*bytes);
    double seconds = link_.latency_s;
    if (link_.bytes_per_second > 0) seconds += streamed_bytes_ / link_.bytes_per_second;
    if (seconds > 0) {
      std::this_thread::sleep_until(stream_start_ + std::chrono::duration_cast<Clock::duration>(
                                                        std::chrono::duration<double>(seconds)));
    }
    if (stats_ != nullptr) {
      stats_->fetches += 1;
      stats_->bytes += *bytes;
      stats_->inner_seconds += std::chrono::duration<double>(fetched - start).count();
      stats_->paced_seconds += std::chrono::duration<double>(Clock::now() - start).count();
    }
    return bytes;
  }

 private:
  const std::unique_ptr<KvSource> inner_;
  const LinkModel link_;
  LinkPacingStats* const stats_;
  bool started_ = false;
  Clock::time_point stream_start_;
  double streamed_bytes_ = 0;
};

}  // namespace

absl::Status LinkModel::Validate() const {
  if (!(latency_s >= 0) || !std::isfinite(latency_s)) {
    return absl::InvalidArgumentError("LinkModel.latency_s must be finite and >= 0");
  }
  if (!(bytes_per_second >= 0) || !std::isfinite(bytes_per_second)) {
    return absl::InvalidArgumentError("LinkModel.bytes_per_second must be finite and >= 0");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<KvSource>> MakeLinkPacedKvSource(std::unique_ptr<KvSource> inner,
                                                                const LinkModel& link,
                                                                LinkPacingStats* stats) {
  if (inner == nullptr) return absl::InvalidArgumentError("MakeLinkPacedKvSource: no source");
  if (auto s = link.Validate(); !s.ok()) return s;
  return std::unique_ptr<KvSource>(new LinkPacedKvSource(std::move(inner), link, stats));
}

std::unique_ptr<KvSource> MakeInProcessKvSource(std::shared_ptr<const CompressedKv> kv,
                                                const LinkModel& link) {
  std::unique_ptr<KvSource> source = std::make_unique<InProcessKvSource>(std::move(kv));
  // No link, or one that does not validate (callers pass validated links:
  // InProcessKvStore checks them in Create and SetLink): no pacing.
  if ((link.latency_s == 0 && link.bytes_per_second == 0) || !link.Validate().ok()) {
    return source;
  }
  return std::make_unique<LinkPacedKvSource>(std::move(source), link, nullptr);
}

absl::StatusOr<std::unique_ptr<InProcessKvStore>> InProcessKvStore::Create(const LinkModel& link) {
  if (auto s = link.Validate(); !s.ok()) return s;
  return std::unique_ptr<InProcessKvStore>(new InProcessKvStore(link));
}

void InProcessKvStore::Put(const std::string& key, CompressedKv kv) {
  auto value = std::make_shared<const CompressedKv>(std::move(kv));
  absl::MutexLock lock(&mu_);
  entries_[key] = std::move(value);
}

absl::Status InProcessKvStore::Erase(const std::string& key) {
  absl::MutexLock lock(&mu_);
  if (entries_.erase(key) == 0) return absl::NotFoundError(absl::StrCat("no KV stored for ", key));
  return absl::OkStatus();
}

absl::StatusOr<size_t> InProcessKvStore::StoredBytes(const std::string& key) const {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return absl::NotFoundError(absl::StrCat("no KV stored for ", key));
  return it->second->stored_bytes();
}

absl::StatusOr<std::unique_ptr<KvSource>> InProcessKvStore::Open(const std::string& key) const {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return absl::NotFoundError(absl::StrCat("no KV stored for ", key));
  return MakeInProcessKvSource(it->second, link_);
}

absl::Status InProcessKvStore::SetLink(const LinkModel& link) {
  if (auto s = link.Validate(); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  link_ = link;
  return absl::OkStatus();
}

}  // namespace krul
