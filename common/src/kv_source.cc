#include "krul/kv_source.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"

namespace krul {
namespace {

using Clock = std::chrono::steady_clock;

class InProcessKvSource final : public KvSource {
 public:
  InProcessKvSource(std::shared_ptr<const CompressedKv> kv, const LinkModel& link)
      : kv_(std::move(kv)), link_(link) {}

  absl::StatusOr<size_t> Fetch(std::span<const int> layers, int begin, int end,
                               KvCache& cache) override {
    const auto start = Clock::now();
    const CompressedKv& kv = *kv_;
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
    for (int layer : layers) {
      if (auto st = kv.DecompressLayer(layer, begin, end, cache); !st.ok()) return st;
    }
    const size_t moved = static_cast<size_t>(std::llround(bytes));
    // The emulated link: the request completes no earlier than latency +
    // transfer time after it started (the decompression above overlaps it,
    // as it would overlap a real transfer's tail).
    if (link_.latency_s > 0 || link_.bytes_per_second > 0) {
      double seconds = link_.latency_s;
      if (link_.bytes_per_second > 0) seconds += bytes / link_.bytes_per_second;
      std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(
                                                std::chrono::duration<double>(seconds)));
    }
    return moved;
  }

 private:
  const std::shared_ptr<const CompressedKv> kv_;
  const LinkModel link_;
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

std::unique_ptr<KvSource> MakeInProcessKvSource(std::shared_ptr<const CompressedKv> kv,
                                                const LinkModel& link) {
  return std::make_unique<InProcessKvSource>(std::move(kv), link);
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
