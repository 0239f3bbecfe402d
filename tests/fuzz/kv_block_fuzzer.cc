// Fuzzes the KV block codec (krul/kvformat/kv_block.h): the bytes a kvstore
// or a worker reads back from disk or the network.
//
// Input: one mode byte, then the candidate block. Random bytes almost never
// carry valid XXH3 checksums, so with mode bit 0 set the harness first writes
// the true checksums into the header (and with bit 1 the true payload size),
// letting mutations reach the field checks behind them.
//
// Properties: nothing crashes; the streamed checksum (BlockChecksumStream,
// any split) equals the one-shot one; a precomputed payload checksum gives
// the same verdict as none, and a wrong one is refused; a block that
// decodes re-encodes to exactly the same bytes (every header byte is
// checked, so no two encodings decode alike); its BlockRef verifies it; and
// a block that decodes is rejected once truncated.
#include <xxhash.h>

#include <cstdint>
#include <string>

#include "fuzz_util.h"
#include "krul/base/byte_order.h"
#include "krul/kvformat/kv_block.h"
#include "krul/kvformat/manifest.h"

namespace {

constexpr size_t kOffPayloadBytes = 44;
constexpr size_t kOffPayloadXxh3 = 48;
constexpr size_t kOffHeaderXxh3 = 56;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t mode = data[0];
  std::string bytes(krul::fuzz::AsView(data + 1, size - 1));
  if (bytes.size() >= krul::kBlockHeaderBytes) {
    char* h = bytes.data();
    const std::string_view payload = std::string_view(bytes).substr(krul::kBlockHeaderBytes);
    if (mode & 2) {
      krul::internal::Put32(h + kOffPayloadBytes, static_cast<uint32_t>(payload.size()));
    }
    if (mode & 1) {
      krul::internal::Put64(h + kOffPayloadXxh3, XXH3_64bits(payload.data(), payload.size()));
      krul::internal::Put64(h + kOffHeaderXxh3, XXH3_64bits(h, kOffHeaderXxh3));
    }
  }

  // The streamed checksum, fed in pieces of (mode >> 2) + 1 bytes, is the
  // one-shot checksum.
  krul::BlockChecksumStream stream;
  const size_t piece = (mode >> 2) + 1;
  for (size_t at = 0; at < bytes.size(); at += piece) {
    stream.Update(std::string_view(bytes).substr(at, piece));
  }
  FUZZ_CHECK(stream.Digest() == krul::BlockChecksum(bytes));

  absl::StatusOr<krul::BlockHeader> header = krul::DecodeBlockHeader(bytes);
  absl::StatusOr<krul::DecodedBlock> block = krul::DecodeBlock(bytes);
  if (bytes.size() >= krul::kBlockHeaderBytes) {
    // A precomputed payload checksum gives the same verdict as reading the
    // payload again.
    const uint64_t payload_xxh3 =
        krul::BlockChecksum(std::string_view(bytes).substr(krul::kBlockHeaderBytes));
    FUZZ_CHECK(krul::DecodeBlock(bytes, payload_xxh3).status().code() == block.status().code());
  }
  if (!block.ok()) {
    FUZZ_CHECK(absl::IsDataLoss(block.status()) || absl::IsUnimplemented(block.status()));
    return 0;
  }
  FUZZ_CHECK(header.ok());
  FUZZ_CHECK(block->payload.size() == header->payload_bytes);
  FUZZ_CHECK(block->payload.data() == bytes.data() + krul::kBlockHeaderBytes);
  FUZZ_CHECK(krul::BlockChecksum(block->payload) == block->header.payload_xxh3);

  absl::StatusOr<std::string> again = krul::EncodeBlock(block->header, block->payload);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(*again == bytes);

  absl::StatusOr<krul::v1::BlockRef> ref = krul::MakeBlockRef(7, bytes);
  FUZZ_CHECK(ref.ok());
  FUZZ_CHECK(krul::VerifyBlock(*ref, bytes).ok());
  // A precomputed checksum that is not the payload's is refused.
  FUZZ_CHECK(absl::IsDataLoss(krul::DecodeBlock(bytes, block->header.payload_xxh3 + 1).status()));
  FUZZ_CHECK(absl::IsDataLoss(krul::VerifyBlock(*ref, bytes, ref->payload_xxh3() ^ 1).status()));
  FUZZ_CHECK(!krul::DecodeBlock(std::string_view(bytes).substr(0, bytes.size() - 1)).ok());
  return 0;
}
