// Where a returning conversation's stored KV comes from during a restore.
//
// The restore executor's load thread asks a KvSource for one layer (or one
// shared pair, stored once for both) over a token range and gets the
// restored K/V written into the conversation's cache, whichever backend's it
// is (backend_kv_cache.h: straight into host memory on the CPU, through
// staged rows to the device on CUDA). The interface is deliberately narrow
// so the in-process store here, the kvstore client (gRPC control + UCX bulk
// transfer) and a pinned host store on the GPU are interchangeable.
//
// InProcessKvStore keeps CompressedKv values in memory and can emulate a
// link (latency + bandwidth) so benchmarks see realistic load times without
// a network. The emulation is one wrapper, MakeLinkPacedKvSource, that
// works over any source (also the kvstore's) and models a restore's loads
// as ONE stream, as the worker reads them: a fetch does the real work
// (transfer, verification, decompression) and then waits until latency +
// (bytes fetched so far) / bandwidth has passed since the first fetch, so
// the stream takes max(real, emulated). It is an emulation (a sleep), never
// a measurement of a link.
#ifndef KRUL_RESTORE_KV_SOURCE_H_
#define KRUL_RESTORE_KV_SOURCE_H_

#include <cstddef>
#include <memory>
#include <span>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "krul/compress/compressor.h"
#include "krul/engine/backend_kv_cache.h"

namespace krul {

class KvSource {
 public:
  virtual ~KvSource() = default;

  // Fetches history tokens [begin, end) of `layers` (one layer, or the two
  // layers of a shared pair, transferred once) and writes each layer's K/V
  // into `cache` at the same positions through its write methods, touching
  // nothing else. The writes may still be in flight on return (the caller
  // waits with cache.WaitForWrites()). Returns the bytes transferred.
  // INVALID_ARGUMENT: a layer or range that was not stored, or a cache of
  // the wrong shape; DATA_LOSS: stored bytes failed validation (checksum,
  // sizes); UNAVAILABLE: the store or link is down (the caller falls back to
  // recomputing); NOT_FOUND: the conversation version is gone.
  // Thread safety: one Fetch at a time per source (the load thread); it may
  // run while the backend computes on other layers / positions of `cache`.
  virtual absl::StatusOr<size_t> Fetch(std::span<const int> layers, int begin, int end,
                                       BackendKvCache& cache) = 0;
};

// An emulated link between the worker and the store.
struct LinkModel {
  double latency_s = 0;         // once per stream (per source)
  double bytes_per_second = 0;  // 0 = unlimited (only the real work counts)

  // INVALID_ARGUMENT when a value is negative or not finite.
  absl::Status Validate() const;
};

// What a link-paced source measured, summed over its fetches, so a
// benchmark can show the real store's share of the paced time.
struct LinkPacingStats {
  int fetches = 0;           // successful fetches
  size_t bytes = 0;          // as returned by the wrapped source
  double inner_seconds = 0;  // in the wrapped source (the real work)
  double paced_seconds = 0;  // whole fetches, including the wait
};

// A source that fetches through `inner` and then waits until
// link.latency_s + bytes / link.bytes_per_second has passed since its first
// fetch started (bytes = what `inner` returned, summed over every fetch so
// far): one source is one streamed request, so open one per restore. A
// failed fetch returns at once, unpaced. `stats`
// (may be null, not owned) accumulates every successful fetch; it must
// outlive the source and be read only while no Fetch runs.
// INVALID_ARGUMENT: `inner` is null or `link` does not validate.
// Thread safety: as `inner` (one Fetch at a time).
absl::StatusOr<std::unique_ptr<KvSource>> MakeLinkPacedKvSource(std::unique_ptr<KvSource> inner,
                                                                const LinkModel& link,
                                                                LinkPacingStats* stats = nullptr);

// Conversations' compressed KV in memory, keyed by a caller-chosen string
// (tenant/conversation/turn). Thread-safe.
class InProcessKvStore {
 public:
  // INVALID_ARGUMENT if `link` does not validate.
  static absl::StatusOr<std::unique_ptr<InProcessKvStore>> Create(const LinkModel& link = {});

  // Stores (or replaces) `kv` under `key`.
  void Put(const std::string& key, CompressedKv kv);
  // Removes `key`; NOT_FOUND when absent.
  absl::Status Erase(const std::string& key);
  // Stored payload bytes of `key`; NOT_FOUND when absent.
  absl::StatusOr<size_t> StoredBytes(const std::string& key) const;

  // A source reading `key`'s current value (later Puts do not affect it).
  // NOT_FOUND when absent. The source may outlive the store.
  absl::StatusOr<std::unique_ptr<KvSource>> Open(const std::string& key) const;

  // Changes the emulated link for sources opened afterwards.
  absl::Status SetLink(const LinkModel& link);

 private:
  explicit InProcessKvStore(const LinkModel& link) : link_(link) {}
  mutable absl::Mutex mu_;
  LinkModel link_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<const CompressedKv>> entries_
      ABSL_GUARDED_BY(mu_);
};

// A source over one CompressedKv behind `link` (what InProcessKvStore::Open
// returns). The bytes a fetch transfers are the stored payload of the
// segments it reads, pro rata for partly read segments, counted once for a
// segment shared by both layers. The link is MakeLinkPacedKvSource's (none
// when `link` is all zero or does not validate).
std::unique_ptr<KvSource> MakeInProcessKvSource(std::shared_ptr<const CompressedKv> kv,
                                                const LinkModel& link);

}  // namespace krul

#endif  // KRUL_RESTORE_KV_SOURCE_H_
