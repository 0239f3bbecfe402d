#include "krul/transport/transport.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "krul/base/byte_order.h"
#include "transport_internal.h"
#include "xxhash.h"

namespace krul {

std::string_view TransferOpName(TransferOp op) {
  return op == TransferOp::kRead ? "read" : "write";
}

absl::Status TransferSync(Transport& transport, TransferOp op, MemoryRegion& local,
                          RemoteRegion& remote, std::span<const TransferSegment> segments,
                          absl::Duration timeout) {
  absl::StatusOr<std::unique_ptr<Transfer>> transfer =
      transport.PrepareTransfer(op, local, remote, segments);
  if (!transfer.ok()) return transfer.status();
  if (absl::Status posted = (*transfer)->Post(); !posted.ok()) return posted;
  return (*transfer)->Wait(timeout);
}

namespace transport_internal {
namespace {

constexpr char kMagic[4] = {'K', 'R', 'T', '1'};
constexpr uint8_t kFrameAddress = 1;
constexpr uint8_t kFrameGrant = 2;
constexpr size_t kHeaderBytes = 12;
constexpr size_t kTrailerBytes = 8;
constexpr size_t kGrantFixedBytes = 48;
// Frames are small (a UCX worker address is a few hundred bytes); the cap
// keeps a mangled length from asking for a huge allocation.
constexpr uint32_t kMaxPayloadBytes = 1 << 20;

// Frames are little-endian (krul/base/byte_order.h).
using ::krul::internal::Append32;
using ::krul::internal::Append64;
using ::krul::internal::Get32;
using ::krul::internal::Get64;

std::string EncodeFrame(WireKind kind, uint8_t type, std::string_view payload) {
  std::string out(kMagic, sizeof(kMagic));
  out.push_back(static_cast<char>(kind));
  out.push_back(static_cast<char>(type));
  out.push_back(0);
  out.push_back(0);
  Append32(out, static_cast<uint32_t>(payload.size()));
  out.append(payload);
  Append64(out, XXH64(out.data(), out.size(), 0));
  return out;
}

absl::StatusOr<std::string_view> DecodeFrame(WireKind kind, uint8_t type, std::string_view bytes,
                                             const char* what) {
  if (bytes.size() < kHeaderBytes + kTrailerBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("transport ", what, ": ", bytes.size(), " bytes is too short"));
  }
  if (std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("transport ", what, ": bad magic"));
  }
  const uint32_t payload_len = Get32(bytes.data() + 8);
  if (payload_len > kMaxPayloadBytes ||
      bytes.size() != kHeaderBytes + payload_len + kTrailerBytes) {
    return absl::InvalidArgumentError(absl::StrCat("transport ", what, ": length ", payload_len,
                                                   " does not match ", bytes.size(), " bytes"));
  }
  const size_t body = kHeaderBytes + payload_len;
  if (XXH64(bytes.data(), body, 0) != Get64(bytes.data() + body)) {
    return absl::InvalidArgumentError(absl::StrCat("transport ", what, ": checksum mismatch"));
  }
  if (static_cast<uint8_t>(bytes[4]) != static_cast<uint8_t>(kind)) {
    return absl::InvalidArgumentError(
        absl::StrCat("transport ", what, " is for another transport kind (",
                     static_cast<int>(bytes[4]), ", expected ", static_cast<int>(kind), ")"));
  }
  if (static_cast<uint8_t>(bytes[5]) != type || bytes[6] != 0 || bytes[7] != 0) {
    return absl::InvalidArgumentError(absl::StrCat("transport ", what, ": wrong frame type"));
  }
  return bytes.substr(kHeaderBytes, payload_len);
}

}  // namespace

std::string EncodeAddress(WireKind kind, std::string_view payload) {
  return EncodeFrame(kind, kFrameAddress, payload);
}

absl::StatusOr<std::string> DecodeAddress(WireKind kind, std::string_view bytes) {
  absl::StatusOr<std::string_view> payload = DecodeFrame(kind, kFrameAddress, bytes, "address");
  if (!payload.ok()) return payload.status();
  if (payload->empty()) return absl::InvalidArgumentError("transport address: empty payload");
  return std::string(*payload);
}

std::string EncodeGrant(WireKind kind, const Grant& grant) {
  std::string payload;
  Append64(payload, grant.base_address);
  Append64(payload, grant.length);
  const int64_t expires_ns = grant.expires == absl::InfiniteFuture()
                                 ? std::numeric_limits<int64_t>::max()
                                 : absl::ToUnixNanos(grant.expires);
  Append64(payload, static_cast<uint64_t>(expires_ns));
  Append64(payload, grant.owner_id);
  Append64(payload, grant.region_id);
  Append64(payload, grant.grant_id);
  payload.append(grant.rkey);
  return EncodeFrame(kind, kFrameGrant, payload);
}

absl::StatusOr<Grant> DecodeGrant(WireKind kind, std::string_view bytes) {
  absl::StatusOr<std::string_view> payload = DecodeFrame(kind, kFrameGrant, bytes, "descriptor");
  if (!payload.ok()) return payload.status();
  if (payload->size() < kGrantFixedBytes) {
    return absl::InvalidArgumentError("transport descriptor: payload too short");
  }
  const char* p = payload->data();
  Grant grant;
  grant.base_address = Get64(p);
  grant.length = Get64(p + 8);
  const auto expires_ns = static_cast<int64_t>(Get64(p + 16));
  grant.expires = expires_ns == std::numeric_limits<int64_t>::max()
                      ? absl::InfiniteFuture()
                      : absl::FromUnixNanos(expires_ns);
  grant.owner_id = Get64(p + 24);
  grant.region_id = Get64(p + 32);
  grant.grant_id = Get64(p + 40);
  grant.rkey.assign(payload->substr(kGrantFixedBytes));
  if (grant.length == 0 || grant.base_address + grant.length < grant.base_address) {
    return absl::InvalidArgumentError("transport descriptor: empty or wrapping range");
  }
  return grant;
}

absl::Status CheckDescribeRange(uint64_t offset, uint64_t length, uint64_t size) {
  if (length == 0 || offset > size || length > size - offset) {
    return absl::OutOfRangeError(absl::StrCat("Describe range [", offset, ", +", length,
                                              ") is empty or outside the region of ", size,
                                              " bytes"));
  }
  return absl::OkStatus();
}

absl::Status ValidateTransfer(std::span<const TransferSegment> segments, const MemoryRegion& local,
                              const RemoteRegion& remote) {
  const uint64_t local_size = local.size(), remote_size = remote.size();
  if (segments.empty()) return absl::InvalidArgumentError("transfer has no segments");
  for (size_t i = 0; i < segments.size(); ++i) {
    const TransferSegment& s = segments[i];
    if (s.length_bytes == 0) {
      return absl::InvalidArgumentError(absl::StrCat("transfer segment ", i, " is empty"));
    }
    if (s.local_offset > local_size || s.length_bytes > local_size - s.local_offset) {
      return absl::OutOfRangeError(absl::StrCat("transfer segment ", i, " [", s.local_offset, ", +",
                                                s.length_bytes, ") exceeds the local region of ",
                                                local_size, " bytes"));
    }
    if (s.remote_offset > remote_size || s.length_bytes > remote_size - s.remote_offset) {
      return absl::OutOfRangeError(
          absl::StrCat("transfer segment ", i, " [", s.remote_offset, ", +", s.length_bytes,
                       ") exceeds the remote grant of ", remote_size, " bytes"));
    }
  }
  return CheckNotExpired(remote.expires());
}

absl::Status CheckObserveLanding(TransferOp op, TransferState state, uint64_t piece_bytes) {
  if (op != TransferOp::kRead) {
    return absl::InvalidArgumentError("ObserveLanding: only reads land bytes here");
  }
  if (piece_bytes == 0) return absl::InvalidArgumentError("ObserveLanding: zero piece size");
  if (state == TransferState::kInFlight) {
    return absl::FailedPreconditionError("ObserveLanding on a transfer in flight");
  }
  return absl::OkStatus();
}

void ObservePieces(const LandingObserver& observer, size_t segment, const uint8_t* data,
                   uint64_t begin, uint64_t length, uint64_t piece_bytes) {
  for (uint64_t done = 0; done < length;) {
    const uint64_t n = std::min(piece_bytes, length - done);
    observer(segment, begin + done, std::span<const uint8_t>(data + done, n));
    done += n;
  }
}

absl::Status CheckNotExpired(absl::Time expires) {
  if (absl::Now() >= expires) {
    return absl::PermissionDeniedError(
        absl::StrCat("transfer grant expired at ", absl::FormatTime(expires)));
  }
  return absl::OkStatus();
}

}  // namespace transport_internal
}  // namespace krul
