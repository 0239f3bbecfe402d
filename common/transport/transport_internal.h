// Wire formats and checks shared by the Transport implementations.
//
// Addresses and grant descriptors travel through the control plane as bytes
// that a peer (or an attacker, or a bit flip) could mangle, and UCX parses
// worker addresses and packed remote keys without validating them. So both
// are framed, little-endian:
//   magic "KRT1" (4) | wire kind u8 | frame type u8 | reserved u16 (0)
//   | payload_len u32 | payload | XXH64(all preceding bytes, seed 0) u64
// A grant payload is
//   base_address u64 | length u64 | expires_unix_ns i64 (INT64_MAX: never)
//   | owner_id u64 | region_id u64 | grant_id u64 | rkey bytes (the rest)
// An address payload is the implementation's own bytes (UCX worker address).
#ifndef KRUL_COMMON_TRANSPORT_TRANSPORT_INTERNAL_H_
#define KRUL_COMMON_TRANSPORT_TRANSPORT_INTERNAL_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "krul/transport/transport.h"

namespace krul::transport_internal {

enum class WireKind : uint8_t { kUcx = 1, kFake = 2 };

std::string EncodeAddress(WireKind kind, std::string_view payload);
// INVALID_ARGUMENT when `bytes` is not an intact address frame of `kind`.
absl::StatusOr<std::string> DecodeAddress(WireKind kind, std::string_view bytes);

struct Grant {
  uint64_t base_address = 0;  // remote virtual address of the first granted byte
  uint64_t length = 0;
  absl::Time expires = absl::InfiniteFuture();
  uint64_t owner_id = 0;   // implementation-defined (the fake: transport id)
  uint64_t region_id = 0;  // implementation-defined (the fake: region id)
  // UCX: the serving side's record of this grant (range, expiry), which
  // messages-protocol requests name; random, 0 = none. The fake: unused.
  uint64_t grant_id = 0;
  std::string rkey;  // packed UCX remote key; empty for the fake
};

std::string EncodeGrant(WireKind kind, const Grant& grant);
// INVALID_ARGUMENT when `bytes` is not an intact grant frame of `kind` or the
// range wraps around the address space.
absl::StatusOr<Grant> DecodeGrant(WireKind kind, std::string_view bytes);

// OUT_OF_RANGE unless 0 < length and offset + length <= size.
absl::Status CheckDescribeRange(uint64_t offset, uint64_t length, uint64_t size);

// The checks every transport makes before preparing a transfer:
// INVALID_ARGUMENT for no segments or a zero-length one; OUT_OF_RANGE for a
// segment outside `local` locally or `remote` remotely; PERMISSION_DENIED
// once the remote grant has expired.
absl::Status ValidateTransfer(std::span<const TransferSegment> segments, const MemoryRegion& local,
                              const RemoteRegion& remote);

// PERMISSION_DENIED once `expires` has passed.
absl::Status CheckNotExpired(absl::Time expires);

// The argument checks of Transfer::ObserveLanding.
absl::Status CheckObserveLanding(TransferOp op, TransferState state, uint64_t piece_bytes);

// Calls `observer` for [begin, begin + length) of `segment`, whose first
// byte is at `data`, in pieces of at most `piece_bytes`.
void ObservePieces(const LandingObserver& observer, size_t segment, const uint8_t* data,
                   uint64_t begin, uint64_t length, uint64_t piece_bytes);

}  // namespace krul::transport_internal

#endif  // KRUL_COMMON_TRANSPORT_TRANSPORT_INTERNAL_H_
