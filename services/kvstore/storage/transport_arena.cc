#include "kvstore/storage/transport_arena.h"

#include <map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "krul/base/log.h"

namespace krul::kvstore {
namespace {

constexpr uint64_t kAlign = 64;

uint64_t RoundUp(uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

}  // namespace

struct TransportArena::State : std::enable_shared_from_this<State> {
  struct Chunk {
    std::unique_ptr<MemoryRegion> region;
    std::map<uint64_t, uint64_t> free;  // offset -> bytes, non-adjacent.
    bool dedicated = false;
    std::string whole_descriptor;  // Lazily, see ChunkDescriptor.
  };

  Transport* transport;
  uint64_t max_bytes;
  uint64_t chunk_bytes;
  absl::Mutex mu;
  std::vector<std::unique_ptr<Chunk>> chunks ABSL_GUARDED_BY(mu);
  uint64_t region_bytes ABSL_GUARDED_BY(mu) = 0;
  bool warned ABSL_GUARDED_BY(mu) = false;

  // First fit in `c`; returns the offset or UINT64_MAX.
  static uint64_t TakeFrom(Chunk& c, uint64_t bytes) {
    for (auto it = c.free.begin(); it != c.free.end(); ++it) {
      if (it->second < bytes) continue;
      uint64_t off = it->first;
      uint64_t left = it->second - bytes;
      c.free.erase(it);
      if (left > 0) c.free[off + bytes] = left;
      return off;
    }
    return UINT64_MAX;
  }

  void Free(Chunk* c, uint64_t off, uint64_t bytes) {
    absl::MutexLock lock(&mu);
    if (c->dedicated) {
      for (auto it = chunks.begin(); it != chunks.end(); ++it) {
        if (it->get() == c) {
          region_bytes -= c->region->size();
          chunks.erase(it);
          return;
        }
      }
      return;
    }
    auto next = c->free.lower_bound(off);
    if (next != c->free.end() && off + bytes == next->first) {
      bytes += next->second;
      next = c->free.erase(next);
    }
    if (next != c->free.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second == off) {
        prev->second += bytes;
        return;
      }
    }
    c->free[off] = bytes;
  }

  std::unique_ptr<ByteBuffer> Wrap(Chunk* c, uint64_t off, size_t size, uint64_t bytes) {
    std::shared_ptr<State> self = shared_from_this();
    // The owner's deleter returns the range; it holds the arena state alive.
    std::shared_ptr<const void> owner(
        static_cast<const void*>(c),
        [self, c, off, bytes](const void*) { self->Free(c, off, bytes); });
    return std::make_unique<ByteBuffer>(reinterpret_cast<char*>(c->region->data()) + off, size,
                                        std::move(owner), c->region.get(), off);
  }

  std::unique_ptr<ByteBuffer> Allocate(size_t size) {
    const uint64_t bytes = RoundUp(size == 0 ? 1 : size);
    absl::MutexLock lock(&mu);
    if (bytes > chunk_bytes / 2) {
      if (region_bytes + bytes > max_bytes) return Full(size);
      absl::StatusOr<std::unique_ptr<MemoryRegion>> r = transport->AllocateRegion(bytes);
      if (!r.ok()) return Failed(r.status());
      auto c = std::make_unique<Chunk>();
      c->region = *std::move(r);
      c->dedicated = true;
      region_bytes += bytes;
      Chunk* raw = c.get();
      chunks.push_back(std::move(c));
      return Wrap(raw, 0, size, bytes);
    }
    for (auto& c : chunks) {
      if (c->dedicated) continue;
      uint64_t off = TakeFrom(*c, bytes);
      if (off != UINT64_MAX) return Wrap(c.get(), off, size, bytes);
    }
    if (region_bytes + chunk_bytes > max_bytes) return Full(size);
    absl::StatusOr<std::unique_ptr<MemoryRegion>> r = transport->AllocateRegion(chunk_bytes);
    if (!r.ok()) return Failed(r.status());
    auto c = std::make_unique<Chunk>();
    c->region = *std::move(r);
    c->free[0] = chunk_bytes;
    region_bytes += chunk_bytes;
    uint64_t off = TakeFrom(*c, bytes);
    Chunk* raw = c.get();
    chunks.push_back(std::move(c));
    return Wrap(raw, off, size, bytes);
  }

  std::unique_ptr<ByteBuffer> Full(size_t size) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (!warned) {
      warned = true;
      KRUL_LOG(WARNING) << "kvstore: transport arena full (" << region_bytes << " of " << max_bytes
                        << " bytes); further blocks use heap memory, registered per grant";
    }
    return nullptr;
  }
  std::unique_ptr<ByteBuffer> Failed(const absl::Status& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (!warned) {
      warned = true;
      KRUL_LOG(WARNING) << "kvstore: transport arena cannot allocate: " << s
                        << "; falling back to heap memory";
    }
    return nullptr;
  }
};

TransportArena::TransportArena(Transport* transport, uint64_t max_bytes, uint64_t chunk_bytes)
    : state_(std::make_shared<State>()) {
  state_->transport = transport;
  state_->max_bytes = max_bytes;
  state_->chunk_bytes = RoundUp(chunk_bytes);
}

TransportArena::~TransportArena() = default;

std::unique_ptr<ByteBuffer> TransportArena::Allocate(size_t size) { return state_->Allocate(size); }

uint64_t TransportArena::region_bytes() const {
  absl::MutexLock lock(&state_->mu);
  return state_->region_bytes;
}

}  // namespace krul::kvstore

namespace krul::kvstore {

std::string TransportArena::ChunkDescriptor(const MemoryRegion* region) const {
  absl::MutexLock lock(&state_->mu);
  for (auto& c : state_->chunks) {
    if (c->region.get() != region) continue;
    if (c->dedicated) return "";
    if (c->whole_descriptor.empty()) {
      absl::StatusOr<std::string> d =
          c->region->Describe(0, c->region->size(), absl::InfiniteFuture());
      if (!d.ok()) return "";
      c->whole_descriptor = *std::move(d);
    }
    return c->whole_descriptor;
  }
  return "";
}

}  // namespace krul::kvstore
