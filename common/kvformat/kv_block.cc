#include "krul/kvformat/kv_block.h"

// Inlined, so XXH3 uses the vector width this build targets (AVX2 with
// -march=native: about 1.5x the library's SSE2 speed here), which bounds how
// fast blocks are verified. At most AVX2: xxhash's AVX-512 code is no faster
// here and makes GCC 12 warn (-Wmaybe-uninitialized in its intrinsics).
#define XXH_INLINE_ALL
#if defined(__AVX2__)
#define XXH_VECTOR 2  // XXH_AVX2
#endif
#include <xxhash.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "krul/base/byte_order.h"

namespace krul {
namespace {

using internal::Get16;
using internal::Get32;
using internal::Get64;
using internal::Put16;
using internal::Put32;
using internal::Put64;

// Field offsets inside the 64-byte header (see kv_block.h).
constexpr size_t kOffMagic = 0;
constexpr size_t kOffVersion = 4;
constexpr size_t kOffHeaderBytes = 6;
constexpr size_t kOffDType = 8;
constexpr size_t kOffLayout = 9;
constexpr size_t kOffRank = 10;
constexpr size_t kOffFlags = 11;
constexpr size_t kOffLayer = 12;
constexpr size_t kOffLayerPair = 16;
constexpr size_t kOffTokenBegin = 20;
constexpr size_t kOffNumTokens = 24;
constexpr size_t kOffDims = 28;
constexpr size_t kOffPayloadBytes = 44;
constexpr size_t kOffPayloadXxh3 = 48;
constexpr size_t kOffHeaderXxh3 = 56;
static_assert(kOffHeaderXxh3 + 8 == kBlockHeaderBytes);

// Explicit little-endian stores/loads: the format must not depend on the
// host's byte order.
bool IsFloatDType(BlockDType d) {
  return d == BlockDType::kF32 || d == BlockDType::kF16 || d == BlockDType::kBF16;
}

// Checks the header's fields against each other and against a payload of
// `payload_bytes` bytes. Returns a description of the first problem, or ""
// when the header is consistent. The caller picks the status code: a bad
// header is the caller's mistake when encoding, corruption when decoding.
std::string HeaderProblem(const BlockHeader& h, uint64_t payload_bytes) {
  size_t elem = BlockDTypeSize(h.dtype);
  if (elem == 0) return absl::StrCat("unknown dtype ", static_cast<int>(h.dtype));
  if (h.layout != BlockLayout::kRaw && h.layout != BlockLayout::kKvTokenMajor &&
      h.layout != BlockLayout::kMergedPair) {
    return absl::StrCat("unknown layout ", static_cast<int>(h.layout));
  }
  if (h.rank < 1 || h.rank > kMaxBlockRank) {
    return absl::StrCat("rank ", static_cast<int>(h.rank), " outside [1, ", kMaxBlockRank, "]");
  }
  for (int i = h.rank; i < kMaxBlockRank; ++i) {
    if (h.dims[i] != 0) return absl::StrCat("dims[", i, "] is set beyond rank ", h.rank);
  }
  if (h.layer_pair != kNoLayerPair && h.layer_pair <= h.layer) {
    return absl::StrCat("layer_pair ", h.layer_pair, " is not above layer ", h.layer);
  }
  if (static_cast<uint64_t>(h.token_begin) + h.num_tokens > 0xFFFFFFFFull) {
    return "token range overflows 32 bits";
  }
  if (payload_bytes > kMaxBlockPayloadBytes) {
    return absl::StrCat("payload of ", payload_bytes, " bytes exceeds the limit of ",
                        kMaxBlockPayloadBytes);
  }
  uint64_t count = h.ElementCount();
  bool any_zero_dim = false;
  for (int i = 0; i < h.rank; ++i) any_zero_dim |= h.dims[i] == 0;
  if (count == 0 && !any_zero_dim) return "dims overflow 64 bits";
  if (count > kMaxBlockPayloadBytes || count * elem != payload_bytes) {
    return absl::StrCat("dims hold ", count, " elements of ", elem, " bytes but the payload has ",
                        payload_bytes, " bytes");
  }
  switch (h.layout) {
    case BlockLayout::kRaw:
      if (h.dtype != BlockDType::kU8 || h.rank != 1) return "raw layout needs dtype u8 and rank 1";
      break;
    case BlockLayout::kKvTokenMajor:
      if (!IsFloatDType(h.dtype)) return "kv layout needs a float dtype";
      if (h.rank != 3 || h.dims[0] != 2 || h.dims[1] != h.num_tokens) {
        return "kv layout needs dims (2, num_tokens, kv_dim)";
      }
      break;
    case BlockLayout::kMergedPair:
      if (!IsFloatDType(h.dtype)) return "merged-pair layout needs a float dtype";
      if (h.layer_pair == kNoLayerPair) return "merged-pair layout needs a layer_pair";
      break;
  }
  return "";
}

}  // namespace

size_t BlockDTypeSize(BlockDType dtype) {
  switch (dtype) {
    case BlockDType::kF32:
      return 4;
    case BlockDType::kF16:
    case BlockDType::kBF16:
      return 2;
    case BlockDType::kU8:
      return 1;
  }
  return 0;
}

BlockDType ToBlockDType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return BlockDType::kF32;
    case DType::kF16:
      return BlockDType::kF16;
    case DType::kBF16:
      return BlockDType::kBF16;
  }
  return BlockDType::kU8;
}

uint64_t BlockHeader::ElementCount() const {
  unsigned __int128 count = 1;
  for (int i = 0; i < rank && i < kMaxBlockRank; ++i) {
    count *= dims[i];
    if (count > 0xFFFFFFFFFFFFFFFFull) return 0;
  }
  return static_cast<uint64_t>(count);
}

uint64_t BlockChecksum(std::string_view bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }

struct BlockChecksumStream::State {
  XXH3_state_t xxh3;
};

BlockChecksumStream::BlockChecksumStream() : state_(std::make_unique<State>()) {
  XXH3_64bits_reset(&state_->xxh3);
}
BlockChecksumStream::~BlockChecksumStream() = default;
BlockChecksumStream::BlockChecksumStream(BlockChecksumStream&&) noexcept = default;
BlockChecksumStream& BlockChecksumStream::operator=(BlockChecksumStream&&) noexcept = default;

void BlockChecksumStream::Update(std::string_view bytes) {
  XXH3_64bits_update(&state_->xxh3, bytes.data(), bytes.size());
}

uint64_t BlockChecksumStream::Digest() const { return XXH3_64bits_digest(&state_->xxh3); }

absl::Status EncodeBlockInto(const BlockHeader& header, std::string_view payload, char* out,
                             size_t out_size) {
  if (std::string problem = HeaderProblem(header, payload.size()); !problem.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("EncodeBlock: ", problem));
  }
  if (out_size != EncodedBlockSize(payload.size())) {
    return absl::InvalidArgumentError(absl::StrCat("EncodeBlock: output holds ", out_size,
                                                   " bytes, the block needs ",
                                                   EncodedBlockSize(payload.size())));
  }
  char* h = out;
  std::memset(h, 0, kBlockHeaderBytes);
  Put32(h + kOffMagic, kBlockMagic);
  Put16(h + kOffVersion, kBlockFormatVersion);
  Put16(h + kOffHeaderBytes, static_cast<uint16_t>(kBlockHeaderBytes));
  h[kOffDType] = static_cast<char>(header.dtype);
  h[kOffLayout] = static_cast<char>(header.layout);
  h[kOffRank] = static_cast<char>(header.rank);
  h[kOffFlags] = 0;
  Put32(h + kOffLayer, header.layer);
  Put32(h + kOffLayerPair, header.layer_pair);
  Put32(h + kOffTokenBegin, header.token_begin);
  Put32(h + kOffNumTokens, header.num_tokens);
  for (int i = 0; i < kMaxBlockRank; ++i) Put32(h + kOffDims + 4 * i, header.dims[i]);
  Put32(h + kOffPayloadBytes, static_cast<uint32_t>(payload.size()));
  Put64(h + kOffPayloadXxh3, BlockChecksum(payload));
  Put64(h + kOffHeaderXxh3, XXH3_64bits(h, kOffHeaderXxh3));
  if (!payload.empty()) std::memcpy(out + kBlockHeaderBytes, payload.data(), payload.size());
  return absl::OkStatus();
}

absl::StatusOr<std::string> EncodeBlock(const BlockHeader& header, std::string_view payload) {
  if (payload.size() > kMaxBlockPayloadBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("EncodeBlock: payload of ", payload.size(), " bytes exceeds the limit"));
  }
  std::string out(EncodedBlockSize(payload.size()), '\0');
  if (absl::Status s = EncodeBlockInto(header, payload, out.data(), out.size()); !s.ok()) return s;
  return out;
}

absl::StatusOr<std::string> EncodeRawBlock(std::string_view bytes) {
  BlockHeader h;
  h.dtype = BlockDType::kU8;
  h.layout = BlockLayout::kRaw;
  h.rank = 1;
  if (bytes.size() > kMaxBlockPayloadBytes) {
    return absl::InvalidArgumentError("EncodeRawBlock: more than 4 GiB");
  }
  h.dims[0] = static_cast<uint32_t>(bytes.size());
  return EncodeBlock(h, bytes);
}

absl::StatusOr<BlockHeader> DecodeBlockHeader(std::string_view encoded) {
  if (encoded.size() < kBlockHeaderBytes) {
    return absl::DataLossError(
        absl::StrCat("kv block: ", encoded.size(), " bytes, shorter than the 64-byte header"));
  }
  const char* h = encoded.data();
  if (Get32(h + kOffMagic) != kBlockMagic) return absl::DataLossError("kv block: bad magic");
  uint64_t want = Get64(h + kOffHeaderXxh3);
  if (XXH3_64bits(h, kOffHeaderXxh3) != want) {
    return absl::DataLossError("kv block: header checksum mismatch");
  }
  uint16_t version = Get16(h + kOffVersion);
  if (version > kBlockFormatVersion) {
    return absl::UnimplementedError(absl::StrCat("kv block: format version ", version,
                                                 " is newer than supported ", kBlockFormatVersion));
  }
  if (version == 0 || Get16(h + kOffHeaderBytes) != kBlockHeaderBytes || h[kOffFlags] != 0) {
    return absl::DataLossError("kv block: bad version, header size or flags");
  }
  BlockHeader out;
  out.dtype = static_cast<BlockDType>(static_cast<uint8_t>(h[kOffDType]));
  out.layout = static_cast<BlockLayout>(static_cast<uint8_t>(h[kOffLayout]));
  out.rank = static_cast<uint8_t>(h[kOffRank]);
  out.layer = Get32(h + kOffLayer);
  out.layer_pair = Get32(h + kOffLayerPair);
  out.token_begin = Get32(h + kOffTokenBegin);
  out.num_tokens = Get32(h + kOffNumTokens);
  for (int i = 0; i < kMaxBlockRank; ++i) out.dims[i] = Get32(h + kOffDims + 4 * i);
  out.payload_bytes = Get32(h + kOffPayloadBytes);
  out.payload_xxh3 = Get64(h + kOffPayloadXxh3);
  if (std::string problem = HeaderProblem(out, out.payload_bytes); !problem.empty()) {
    return absl::DataLossError(absl::StrCat("kv block: ", problem));
  }
  return out;
}

absl::StatusOr<DecodedBlock> DecodeBlock(std::string_view encoded,
                                         std::optional<uint64_t> payload_xxh3) {
  absl::StatusOr<BlockHeader> header = DecodeBlockHeader(encoded);
  if (!header.ok()) return header.status();
  size_t payload_size = encoded.size() - kBlockHeaderBytes;
  if (payload_size != header->payload_bytes) {
    return absl::DataLossError(absl::StrCat("kv block: header says ", header->payload_bytes,
                                            " payload bytes, got ", payload_size));
  }
  std::string_view payload = encoded.substr(kBlockHeaderBytes);
  const uint64_t hash = payload_xxh3.has_value() ? *payload_xxh3 : BlockChecksum(payload);
  if (hash != header->payload_xxh3) {
    return absl::DataLossError("kv block: payload checksum mismatch");
  }
  return DecodedBlock{*header, payload};
}

}  // namespace krul
