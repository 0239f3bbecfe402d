// KV block codec: one tensor slice (one layer or one shared layer pair over a
// chunk of tokens) with a self-describing, checksummed 64-byte header.
//
// Byte layout (docs/formats/kv_block.md), all integers little-endian:
//
//   0  u32 magic "KRKV"        28 u32 dims[4] (unused = 0)
//   4  u16 format_version = 1  44 u32 payload_bytes
//   6  u16 header_bytes = 64   48 u64 payload_xxh3  (XXH3-64 of the payload)
//   8  u8  dtype  9 u8 layout  56 u64 header_xxh3   (XXH3-64 of bytes [0, 56))
//  10  u8  rank  11 u8 flags=0 64 payload (payload_bytes bytes)
//  12  u32 layer  16 u32 layer_pair  20 u32 token_begin  24 u32 num_tokens
//
// Blocks cross disks and networks, so DecodeBlock trusts nothing: every byte
// of a block is covered by one of the two checksums, and every field is
// checked against the others before the payload is handed out.
//
// All functions are thread-safe (no shared state).
#ifndef KRUL_KVFORMAT_KV_BLOCK_H_
#define KRUL_KVFORMAT_KV_BLOCK_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/base/dtype.h"

namespace krul {

inline constexpr uint32_t kBlockMagic = 0x564B524Bu;  // Bytes "KRKV".
inline constexpr uint16_t kBlockFormatVersion = 1;
inline constexpr size_t kBlockHeaderBytes = 64;
inline constexpr uint32_t kNoLayerPair = 0xFFFFFFFFu;
inline constexpr int kMaxBlockRank = 4;
// payload_bytes is a u32: a block is one layer's chunk of tokens, far below.
inline constexpr uint64_t kMaxBlockPayloadBytes = 0xFFFFFFFFu;

// Element type of a block's payload. Numbered like krul.v1.DType (0 is
// "unspecified" and never valid), plus raw bytes.
enum class BlockDType : uint8_t {
  kF32 = 1,
  kF16 = 2,
  kBF16 = 3,
  kU8 = 4,  // Opaque bytes (layout kRaw).
};

// How the payload's elements are arranged.
enum class BlockLayout : uint8_t {
  // Opaque bytes: dtype kU8, rank 1, dims[0] = payload_bytes.
  kRaw = 1,
  // K then V of one layer, each (num_tokens, kv_dim) row-major, as in
  // KvCache: rank 3, dims = (2, num_tokens, kv_dim), float dtype.
  kKvTokenMajor = 2,
  // A MiniCache-merged layer pair (layer, layer_pair): the compressor defines
  // the dims; the codec only requires a float dtype and a pair.
  kMergedPair = 3,
};

// Bytes of one element of `dtype`; 0 for values outside the enum.
size_t BlockDTypeSize(BlockDType dtype);

// The BlockDType with the same element type as the engine's DType.
BlockDType ToBlockDType(DType dtype);

// Header fields. EncodeBlock computes payload_bytes and payload_xxh3 itself
// and ignores the values passed in.
struct BlockHeader {
  BlockDType dtype = BlockDType::kU8;
  BlockLayout layout = BlockLayout::kRaw;
  uint8_t rank = 1;
  uint32_t layer = 0;
  uint32_t layer_pair = kNoLayerPair;
  uint32_t token_begin = 0;
  uint32_t num_tokens = 0;
  std::array<uint32_t, kMaxBlockRank> dims = {0, 0, 0, 0};
  uint32_t payload_bytes = 0;
  uint64_t payload_xxh3 = 0;

  // Product of dims[0..rank), or 0 on overflow of 64 bits.
  uint64_t ElementCount() const;
};

// A decoded block: the header and a view of the payload inside the bytes
// that were decoded (valid as long as those bytes are).
struct DecodedBlock {
  BlockHeader header;
  std::string_view payload;
};

// XXH3-64 (seed 0) of `bytes`: the checksum used in headers and manifests.
uint64_t BlockChecksum(std::string_view bytes);

// BlockChecksum of bytes given piece by piece, in order (e.g. as they land
// from a transport), so nobody reads them a second time to check them.
// Not thread-safe; movable.
class BlockChecksumStream {
 public:
  BlockChecksumStream();
  ~BlockChecksumStream();
  BlockChecksumStream(BlockChecksumStream&&) noexcept;
  BlockChecksumStream& operator=(BlockChecksumStream&&) noexcept;

  void Update(std::string_view bytes);
  // BlockChecksum of everything given so far.
  uint64_t Digest() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Size of the encoding of a block with `payload_bytes` payload bytes.
inline size_t EncodedBlockSize(size_t payload_bytes) { return kBlockHeaderBytes + payload_bytes; }

// Encodes header + payload into a new string.
// INVALID_ARGUMENT when the header is inconsistent (unknown dtype/layout,
// rank outside [1, 4], dims whose element count times the dtype size differs
// from payload.size(), a layout's constraints violated) or the payload is
// larger than kMaxBlockPayloadBytes.
absl::StatusOr<std::string> EncodeBlock(const BlockHeader& header, std::string_view payload);

// As EncodeBlock, writing into `out`, which must hold exactly
// EncodedBlockSize(payload.size()) bytes (INVALID_ARGUMENT otherwise). `out`
// may not overlap `payload`. Lets callers encode into registered memory.
absl::Status EncodeBlockInto(const BlockHeader& header, std::string_view payload, char* out,
                             size_t out_size);

// Convenience: a kRaw block holding `bytes`.
absl::StatusOr<std::string> EncodeRawBlock(std::string_view bytes);

// Decodes and verifies only the 64-byte header at the start of `encoded`
// (e.g. to size a buffer before the payload arrives). DATA_LOSS when fewer
// than 64 bytes are given, the magic or header checksum is wrong, or a field
// is invalid; UNIMPLEMENTED for a well-formed header of a newer format
// version.
absl::StatusOr<BlockHeader> DecodeBlockHeader(std::string_view encoded);

// Decodes and verifies a whole block: the header as in DecodeBlockHeader,
// then that exactly payload_bytes follow and that they hash to payload_xxh3.
// DATA_LOSS on any mismatch (truncated, trailing bytes, flipped bit);
// UNIMPLEMENTED for a newer format version. Never returns unverified bytes.
// `payload_xxh3`: BlockChecksum of the payload when the caller already
// computed it over exactly these bytes (e.g. while they were copied in);
// then it is compared instead of reading the payload again.
absl::StatusOr<DecodedBlock> DecodeBlock(std::string_view encoded,
                                         std::optional<uint64_t> payload_xxh3 = std::nullopt);

}  // namespace krul

#endif  // KRUL_KVFORMAT_KV_BLOCK_H_
