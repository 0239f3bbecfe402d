// Helpers shared by the KV store tests: versions with random blocks built
// through the public codec, and self-cleaning scratch directories.
#ifndef KRUL_TESTS_SERVICES_KVSTORE_KV_TEST_UTIL_H_
#define KRUL_TESTS_SERVICES_KVSTORE_KV_TEST_UTIL_H_

#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "gtest/gtest.h"
#include "krul/kvformat/kv_block.h"
#include "krul/kvformat/manifest.h"
#include "krul/v1/kvstore.pb.h"
#include "test_support/test_data.h"

namespace krul::testing {

// A complete version: manifest and encoded blocks, consistent with each
// other. The payload bytes are pseudo-random (seeded), so two versions built
// with different seeds differ in every block.
struct TestVersion {
  v1::Manifest manifest;
  std::vector<std::string> blocks;

  std::vector<absl::string_view> views() const {
    return std::vector<absl::string_view>(blocks.begin(), blocks.end());
  }
  std::vector<uint64_t> sizes() const {
    std::vector<uint64_t> out;
    for (const std::string& b : blocks) out.push_back(b.size());
    return out;
  }
  uint64_t bytes() const {
    uint64_t n = 0;
    for (const std::string& b : blocks) n += b.size();
    return n;
  }
};

inline v1::ConversationKey Key(const std::string& tenant, const std::string& conv, uint32_t turn) {
  v1::ConversationKey k;
  k.set_tenant(tenant);
  k.set_conversation_id(conv);
  k.set_turn(turn);
  return k;
}

// `num_blocks` raw blocks of `payload_bytes` each (layer i = block i % n_layers).
inline TestVersion MakeVersion(const v1::ConversationKey& key, int num_blocks, size_t payload_bytes,
                               uint32_t seed) {
  TestVersion v;
  std::mt19937_64 rng(seed);
  const uint32_t n_layers = 32;
  *v.manifest.mutable_key() = key;
  v.manifest.set_model_id("synthetic-test");
  v.manifest.set_n_layers(n_layers);
  v.manifest.set_plan("plan-" + std::to_string(seed));
  for (int i = 0; i < num_blocks; ++i) {
    std::string payload(payload_bytes, '\0');
    for (size_t j = 0; j < payload_bytes; j += 8) {
      uint64_t r = rng();
      for (size_t k = 0; k < 8 && j + k < payload_bytes; ++k) {
        payload[j + k] = static_cast<char>(r >> (8 * k));
      }
    }
    BlockHeader h;
    h.dtype = BlockDType::kU8;
    h.layout = BlockLayout::kRaw;
    h.rank = 1;
    h.layer = static_cast<uint32_t>(i) % n_layers;
    h.token_begin = 256 * (static_cast<uint32_t>(i) / n_layers);
    h.dims[0] = static_cast<uint32_t>(payload_bytes);
    absl::StatusOr<std::string> enc = EncodeBlock(h, payload);
    EXPECT_TRUE(enc.ok()) << enc.status();
    absl::StatusOr<v1::BlockRef> ref = MakeBlockRef(static_cast<uint32_t>(i), *enc);
    EXPECT_TRUE(ref.ok()) << ref.status();
    *v.manifest.add_blocks() = *ref;
    v.blocks.push_back(*std::move(enc));
  }
  return v;
}

}  // namespace krul::testing

#endif  // KRUL_TESTS_SERVICES_KVSTORE_KV_TEST_UTIL_H_
