// TransportArena: block memory carved out of a few large regions allocated
// by the data-plane Transport (krul::Transport::AllocateRegion).
//
// Why: over UCX between processes of one host, memory that UCX allocated is
// mapped into the client, so a Get becomes one memcpy by the client
// (krul/ucx_transport.h, "direct" protocol), while registering arbitrary
// heap memory per request costs a registration and an extra kernel copy.
// Regions live as long as the arena (and any buffer from it), so no grant
// ever points at unmapped memory; a stale grant can at worst read bytes of a
// reused range, which the client's checksum verification rejects.
//
// Allocation: first fit with coalescing free lists per chunk; requests above
// half a chunk get a dedicated region that is released when freed. When
// max_bytes would be exceeded Allocate returns nullptr (the store falls back
// to heap memory, which the service registers per grant).
//
// Thread-safe. Buffers may outlive the arena object (they keep its state).
#ifndef KRUL_SERVICES_KVSTORE_STORAGE_TRANSPORT_ARENA_H_
#define KRUL_SERVICES_KVSTORE_STORAGE_TRANSPORT_ARENA_H_

#include <cstdint>
#include <memory>
#include <string>

#include "krul/transport/transport.h"
#include "kvstore/storage/byte_buffer.h"

namespace krul::kvstore {

class TransportArena final : public BufferAllocator {
 public:
  // `transport` must outlive every buffer. chunk_bytes: size of each shared
  // region (default 256 MiB); max_bytes: cap on all regions together.
  TransportArena(Transport* transport, uint64_t max_bytes,
                 uint64_t chunk_bytes = uint64_t{256} << 20);
  ~TransportArena() override;

  std::unique_ptr<ByteBuffer> Allocate(size_t size) override;

  // Bytes of regions allocated from the transport so far.
  uint64_t region_bytes() const;

  // A descriptor granting all of `region` without expiry, when `region` is
  // one of the arena's shared chunks (which live as long as the arena);
  // empty otherwise (a dedicated region, or not the arena's). Computed once
  // per chunk. Used by the "chunk" grant scope (trusted clients cache one
  // import per chunk instead of mapping memory per request).
  std::string ChunkDescriptor(const MemoryRegion* region) const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace krul::kvstore

#endif  // KRUL_SERVICES_KVSTORE_STORAGE_TRANSPORT_ARENA_H_
