#include "krul/kvformat/kv_block.h"

#include <xxhash.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace krul {
namespace {

// Little-endian writers independent of the codec, used to build expected
// headers by hand from the layout in docs/formats/kv_block.md.
void Le32(std::string& s, size_t off, uint32_t v) {
  for (int i = 0; i < 4; ++i) s[off + i] = static_cast<char>((v >> (8 * i)) & 0xFF);
}
void Le16(std::string& s, size_t off, uint16_t v) {
  for (int i = 0; i < 2; ++i) s[off + i] = static_cast<char>((v >> (8 * i)) & 0xFF);
}
void Le64(std::string& s, size_t off, uint64_t v) {
  for (int i = 0; i < 8; ++i) s[off + i] = static_cast<char>((v >> (8 * i)) & 0xFF);
}

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng() & 0xFF);
  return s;
}

BlockHeader KvHeader(uint32_t layer, uint32_t token_begin, uint32_t tokens, uint32_t kv_dim) {
  BlockHeader h;
  h.dtype = BlockDType::kF32;
  h.layout = BlockLayout::kKvTokenMajor;
  h.rank = 3;
  h.layer = layer;
  h.token_begin = token_begin;
  h.num_tokens = tokens;
  h.dims = {2, tokens, kv_dim, 0};
  return h;
}

TEST(KvBlockTest, ChecksumIsXxh3OfKnownVector) {
  // Published XXH3-64 (seed 0) of the empty input.
  EXPECT_EQ(BlockChecksum(""), 0x2D06800538D394C2ull);
  std::string data = RandomBytes(1000, 1);
  EXPECT_EQ(BlockChecksum(data), XXH3_64bits(data.data(), data.size()));
}

TEST(KvBlockTest, EncodesTheDocumentedLayout) {
  std::string payload = RandomBytes(2 * 3 * 4 * 4, 2);  // (2, 3 tokens, kv_dim 4) f32
  BlockHeader h = KvHeader(/*layer=*/7, /*token_begin=*/256, /*tokens=*/3, /*kv_dim=*/4);
  absl::StatusOr<std::string> enc = EncodeBlock(h, payload);
  ASSERT_TRUE(enc.ok()) << enc.status();

  // Build the expected bytes by hand.
  std::string want(64, '\0');
  want[0] = 'K';
  want[1] = 'R';
  want[2] = 'K';
  want[3] = 'V';
  Le16(want, 4, 1);
  Le16(want, 6, 64);
  want[8] = 1;   // f32
  want[9] = 2;   // kv token-major
  want[10] = 3;  // rank
  Le32(want, 12, 7);
  Le32(want, 16, 0xFFFFFFFFu);
  Le32(want, 20, 256);
  Le32(want, 24, 3);
  Le32(want, 28, 2);
  Le32(want, 32, 3);
  Le32(want, 36, 4);
  Le32(want, 44, static_cast<uint32_t>(payload.size()));
  Le64(want, 48, XXH3_64bits(payload.data(), payload.size()));
  Le64(want, 56, XXH3_64bits(want.data(), 56));
  want += payload;
  EXPECT_EQ(*enc, want);
}

TEST(KvBlockTest, RoundTripsHeaderAndPayload) {
  for (uint32_t tokens : {0u, 1u, 17u, 256u}) {
    std::string payload = RandomBytes(2ull * tokens * 64 * 2, tokens);
    BlockHeader h = KvHeader(3, 512, tokens, 64);
    h.dtype = BlockDType::kBF16;
    absl::StatusOr<std::string> enc = EncodeBlock(h, payload);
    ASSERT_TRUE(enc.ok()) << enc.status();
    ASSERT_EQ(enc->size(), EncodedBlockSize(payload.size()));
    absl::StatusOr<DecodedBlock> dec = DecodeBlock(*enc);
    ASSERT_TRUE(dec.ok()) << dec.status();
    EXPECT_EQ(dec->payload, payload);
    EXPECT_EQ(dec->header.dtype, BlockDType::kBF16);
    EXPECT_EQ(dec->header.layout, BlockLayout::kKvTokenMajor);
    EXPECT_EQ(dec->header.layer, 3u);
    EXPECT_EQ(dec->header.layer_pair, kNoLayerPair);
    EXPECT_EQ(dec->header.token_begin, 512u);
    EXPECT_EQ(dec->header.num_tokens, tokens);
    EXPECT_EQ(dec->header.dims[2], 64u);
    EXPECT_EQ(dec->header.payload_bytes, payload.size());
  }
}

TEST(KvBlockTest, MergedPairAndRawBlocks) {
  BlockHeader h;
  h.dtype = BlockDType::kF16;
  h.layout = BlockLayout::kMergedPair;
  h.rank = 2;
  h.layer = 4;
  h.layer_pair = 9;
  h.num_tokens = 5;
  h.dims = {5, 8, 0, 0};
  std::string payload = RandomBytes(5 * 8 * 2, 3);
  absl::StatusOr<std::string> enc = EncodeBlock(h, payload);
  ASSERT_TRUE(enc.ok()) << enc.status();
  absl::StatusOr<DecodedBlock> dec = DecodeBlock(*enc);
  ASSERT_TRUE(dec.ok());
  EXPECT_EQ(dec->header.layer_pair, 9u);

  absl::StatusOr<std::string> raw = EncodeRawBlock("hello plan");
  ASSERT_TRUE(raw.ok());
  absl::StatusOr<DecodedBlock> raw_dec = DecodeBlock(*raw);
  ASSERT_TRUE(raw_dec.ok());
  EXPECT_EQ(raw_dec->payload, "hello plan");
  EXPECT_EQ(raw_dec->header.layout, BlockLayout::kRaw);
}

TEST(KvBlockTest, EncodeRejectsInconsistentHeaders) {
  std::string payload(2 * 4 * 8 * 4, 'x');
  auto expect_invalid = [&](BlockHeader h, std::string_view what) {
    absl::StatusOr<std::string> enc = EncodeBlock(h, payload);
    EXPECT_EQ(enc.status().code(), absl::StatusCode::kInvalidArgument) << what;
  };
  BlockHeader good = KvHeader(0, 0, 4, 8);
  ASSERT_TRUE(EncodeBlock(good, payload).ok());
  BlockHeader h = good;
  h.rank = 0;
  expect_invalid(h, "rank 0");
  h = good;
  h.rank = 5;
  expect_invalid(h, "rank 5");
  h = good;
  h.dims[2] = 9;
  expect_invalid(h, "dims disagree with payload size");
  h = good;
  h.dims[0] = 1;
  h.dims[1] = 8;
  expect_invalid(h, "kv layout without leading 2");
  h = good;
  h.num_tokens = 5;
  expect_invalid(h, "kv num_tokens != dims[1]");
  h = good;
  h.dtype = BlockDType::kU8;
  h.dims[2] = 32;
  expect_invalid(h, "kv with u8");
  h = good;
  h.layer = 5;
  h.layer_pair = 5;
  expect_invalid(h, "pair not above layer");
  h = good;
  h.layout = BlockLayout::kMergedPair;
  expect_invalid(h, "merged pair without pair");
  h = good;
  h.dtype = static_cast<BlockDType>(0);
  expect_invalid(h, "dtype 0");
  h = good;
  h.layout = static_cast<BlockLayout>(42);
  expect_invalid(h, "layout 42");
  h = good;
  h.dims[3] = 1;
  expect_invalid(h, "dim beyond rank");

  std::string out(10, '\0');
  EXPECT_EQ(EncodeBlockInto(good, payload, out.data(), out.size()).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(KvBlockTest, EveryHeaderBitFlipIsDataLoss) {
  std::string payload = RandomBytes(2 * 2 * 4 * 4, 5);
  absl::StatusOr<std::string> enc = EncodeBlock(KvHeader(1, 0, 2, 4), payload);
  ASSERT_TRUE(enc.ok());
  for (size_t byte = 0; byte < kBlockHeaderBytes; ++byte) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string bad = *enc;
      bad[byte] = static_cast<char>(bad[byte] ^ (1 << bit));
      absl::StatusOr<DecodedBlock> dec = DecodeBlock(bad);
      ASSERT_EQ(dec.status().code(), absl::StatusCode::kDataLoss)
          << "byte " << byte << " bit " << bit << ": " << dec.status();
    }
  }
}

TEST(KvBlockTest, EveryPayloadByteFlipIsDataLoss) {
  std::string payload = RandomBytes(2 * 8 * 16 * 2, 6);
  BlockHeader h = KvHeader(2, 0, 8, 16);
  h.dtype = BlockDType::kF16;
  absl::StatusOr<std::string> enc = EncodeBlock(h, payload);
  ASSERT_TRUE(enc.ok());
  for (size_t i = kBlockHeaderBytes; i < enc->size(); ++i) {
    std::string bad = *enc;
    bad[i] = static_cast<char>(bad[i] ^ 0x10);
    ASSERT_EQ(DecodeBlock(bad).status().code(), absl::StatusCode::kDataLoss) << "offset " << i;
  }
}

TEST(KvBlockTest, ChecksumStreamEqualsTheChecksumOfTheWhole) {
  const std::string data = RandomBytes(1 << 20, 11);
  for (size_t piece : {size_t{1}, size_t{63}, size_t{4096}, size_t{256} << 10, size_t{1} << 20}) {
    BlockChecksumStream stream;
    for (size_t off = 0; off < data.size(); off += piece) {
      stream.Update(std::string_view(data).substr(off, piece));
    }
    EXPECT_EQ(stream.Digest(), XXH3_64bits(data.data(), data.size())) << "piece " << piece;
  }
  EXPECT_EQ(BlockChecksumStream().Digest(), 0x2D06800538D394C2ull);  // empty input
}

// A checksum the caller computed while the bytes arrived stands in for
// hashing them again: it must match the header, whatever the bytes.
TEST(KvBlockTest, PrecomputedPayloadChecksumIsChecked) {
  const std::string payload = RandomBytes(4096, 12);
  absl::StatusOr<std::string> enc = EncodeRawBlock(payload);
  ASSERT_TRUE(enc.ok());
  const uint64_t right = XXH3_64bits(payload.data(), payload.size());
  absl::StatusOr<DecodedBlock> dec = DecodeBlock(*enc, right);
  ASSERT_TRUE(dec.ok()) << dec.status();
  EXPECT_EQ(dec->payload, payload);
  EXPECT_EQ(DecodeBlock(*enc, right ^ 1).status().code(), absl::StatusCode::kDataLoss);
  // The header is still checked in full.
  std::string bad_header = *enc;
  bad_header[20] ^= 0x01;
  EXPECT_EQ(DecodeBlock(bad_header, right).status().code(), absl::StatusCode::kDataLoss);
}

TEST(KvBlockTest, TruncatedOrExtendedIsDataLoss) {
  absl::StatusOr<std::string> enc = EncodeRawBlock(RandomBytes(300, 7));
  ASSERT_TRUE(enc.ok());
  for (size_t n = 0; n < enc->size(); ++n) {
    ASSERT_EQ(DecodeBlock(std::string_view(*enc).substr(0, n)).status().code(),
              absl::StatusCode::kDataLoss)
        << "length " << n;
  }
  std::string longer = *enc + "x";
  EXPECT_EQ(DecodeBlock(longer).status().code(), absl::StatusCode::kDataLoss);
  // The header alone still decodes (its checksum does not cover the payload).
  absl::StatusOr<BlockHeader> header = DecodeBlockHeader(std::string_view(*enc).substr(0, 64));
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->payload_bytes, 300u);
}

TEST(KvBlockTest, NewerFormatVersionIsUnimplemented) {
  absl::StatusOr<std::string> enc = EncodeRawBlock("abc");
  ASSERT_TRUE(enc.ok());
  std::string newer = *enc;
  Le16(newer, 4, 2);
  Le64(newer, 56, XXH3_64bits(newer.data(), 56));  // A well-formed v2 header.
  EXPECT_EQ(DecodeBlock(newer).status().code(), absl::StatusCode::kUnimplemented);
}

TEST(KvBlockTest, ValidChecksumsButInconsistentFieldsIsDataLoss) {
  // A writer with a bug (or an attacker) can produce matching checksums over
  // nonsense fields; the decoder still refuses them.
  absl::StatusOr<std::string> enc = EncodeRawBlock("abcd");
  ASSERT_TRUE(enc.ok());
  std::string bad = *enc;
  bad[10] = 7;  // rank 7
  Le64(bad, 56, XXH3_64bits(bad.data(), 56));
  EXPECT_EQ(DecodeBlock(bad).status().code(), absl::StatusCode::kDataLoss);
}

TEST(KvBlockTest, RandomBytesNeverDecode) {
  std::mt19937 rng(8);
  for (int i = 0; i < 2000; ++i) {
    std::string junk = RandomBytes(rng() % 200, static_cast<uint32_t>(i));
    if (junk.size() >= 4 && i % 2 == 0) std::memcpy(junk.data(), "KRKV", 4);
    EXPECT_EQ(DecodeBlock(junk).status().code(), absl::StatusCode::kDataLoss);
  }
}

}  // namespace
}  // namespace krul
