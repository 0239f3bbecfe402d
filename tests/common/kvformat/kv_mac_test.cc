#include "krul/kvformat/kv_mac.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <functional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "gtest/gtest.h"
#include "krul/base/byte_order.h"
#include "krul/kvformat/kv_block.h"
#include "krul/kvformat/manifest.h"

namespace krul {
namespace {

const char kMasterHex[] = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const char kOtherHex[] = "f0e0d0c0b0a090807060504030201000ffeeddccbbaa99887766554433221100";

std::string KvBlock(uint32_t layer, uint32_t begin, uint32_t tokens, char fill) {
  BlockHeader h;
  h.dtype = BlockDType::kF32;
  h.layout = BlockLayout::kKvTokenMajor;
  h.rank = 3;
  h.layer = layer;
  h.token_begin = begin;
  h.num_tokens = tokens;
  h.dims = {2, tokens, 4, 0};
  std::string payload(2 * tokens * 4 * 4, fill);
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(fill + i % 7);
  absl::StatusOr<std::string> enc = EncodeBlock(h, payload);
  EXPECT_TRUE(enc.ok());
  return *enc;
}

struct Version {
  v1::Manifest manifest;
  std::vector<std::string> blocks;
};

Version MakeVersion(const std::string& tenant = "alice", uint32_t turn = 3) {
  Version v;
  v.blocks = {KvBlock(0, 0, 8, 'a'), KvBlock(1, 0, 8, 'b'), KvBlock(1, 8, 8, 'c')};
  v1::Manifest& m = v.manifest;
  m.mutable_key()->set_tenant(tenant);
  m.mutable_key()->set_conversation_id("conv-1");
  m.mutable_key()->set_turn(turn);
  m.set_model_id("krul12L");
  m.set_n_layers(2);
  m.set_plan("session record: token ids 1 2 3");
  m.set_history_tokens(16);
  for (uint32_t l = 0; l < 2; ++l) {
    v1::LayerRange* r = m.add_stored_ranges();
    r->set_layer(l);
    r->set_token_begin(0);
    r->set_token_end(16);
  }
  for (size_t i = 0; i < v.blocks.size(); ++i) {
    *m.add_blocks() = *MakeBlockRef(static_cast<uint32_t>(i), v.blocks[i]);
  }
  return v;
}

KvMacKey Key(const char* hex) { return *KvMacKey::FromHex(hex); }

absl::Status Seal(const KvMacKey& key, Version& v) {
  std::vector<std::string_view> views(v.blocks.begin(), v.blocks.end());
  return SealManifest(key, views, v.manifest);
}

// HKDF-SHA256 with one output block (RFC 5869), written out with the
// one-shot HMAC so the keyring's EVP_KDF use is checked independently.
std::string Hkdf32(std::string_view ikm, std::string_view salt, std::string_view info) {
  unsigned char prk[32];
  unsigned int n = 0;
  HMAC(EVP_sha256(), salt.data(), static_cast<int>(salt.size()),
       reinterpret_cast<const unsigned char*>(ikm.data()), ikm.size(), prk, &n);
  std::string t(info);
  t.push_back('\x01');
  unsigned char okm[32];
  HMAC(EVP_sha256(), prk, 32, reinterpret_cast<const unsigned char*>(t.data()), t.size(), okm, &n);
  return std::string(reinterpret_cast<const char*>(okm), 32);
}

std::string KeyBytes(const KvMacKey& k) {
  return std::string(reinterpret_cast<const char*>(k.data()), k.size());
}

TEST(KvMacKeyringTest, DerivesTenantKeysWithHkdfAndExplicitKeysWin) {
  std::string text = absl::StrCat("# keys\n\n", kMasterHex, "\n  bob : ", kOtherHex, "\n");
  auto ring = KvMacKeyring::Parse(text);
  ASSERT_TRUE(ring.ok()) << ring.status();
  EXPECT_TRUE(ring->has_master());
  EXPECT_EQ(ring->tenant_keys(), 1u);
  const std::string master = absl::HexStringToBytes(kMasterHex);
  auto alice = ring->ForTenant("alice");
  auto carol = ring->ForTenant("carol");
  auto bob = ring->ForTenant("bob");
  ASSERT_TRUE(alice.ok() && carol.ok() && bob.ok());
  EXPECT_EQ(KeyBytes(*alice), Hkdf32(master, "krul-kv-mac-v1", "alice"));
  EXPECT_EQ(KeyBytes(*carol), Hkdf32(master, "krul-kv-mac-v1", "carol"));
  EXPECT_NE(KeyBytes(*alice), KeyBytes(*carol));
  EXPECT_EQ(KeyBytes(*bob), KeyBytes(Key(kOtherHex)));

  auto only_bob = KvMacKeyring::Parse(absl::StrCat("bob:", kOtherHex));
  ASSERT_TRUE(only_bob.ok());
  EXPECT_EQ(only_bob->ForTenant("alice").status().code(), absl::StatusCode::kNotFound);
}

TEST(KvMacKeyringTest, RejectsMalformedFiles) {
  for (std::string text :
       {std::string(""), std::string("# nothing\n"), std::string("abcd\n"),
        absl::StrCat(kMasterHex, "\n", kOtherHex, "\n"),
        absl::StrCat("bob:", kMasterHex, "\nbob:", kOtherHex, "\n"), absl::StrCat(":", kMasterHex),
        absl::StrCat(std::string(kMasterHex).substr(2), "zz")}) {
    auto ring = KvMacKeyring::Parse(text);
    EXPECT_EQ(ring.status().code(), absl::StatusCode::kInvalidArgument) << text;
  }
  EXPECT_FALSE(KvMacKeyring::ReadFile("/nonexistent/kv_mac.key").ok());
}

TEST(KvMacTest, SealedVersionVerifies) {
  Version v = MakeVersion();
  const KvMacKey key = Key(kMasterHex);
  ASSERT_TRUE(Seal(key, v).ok());
  EXPECT_EQ(v.manifest.seal().version(), kManifestSealVersion);
  EXPECT_EQ(v.manifest.seal().salt().size(), kSealSaltBytes);
  EXPECT_EQ(v.manifest.seal().mac().size(), kManifestMacBytes);
  EXPECT_TRUE(ValidateManifest(v.manifest).ok()) << ValidateManifest(v.manifest);
  EXPECT_TRUE(VerifyManifestSeal(key, v.manifest).ok());
  for (uint32_t i = 0; i < v.blocks.size(); ++i) {
    EXPECT_EQ(v.manifest.blocks(i).mac().size(), kBlockMacBytes);
    EXPECT_TRUE(VerifyBlockMac(key, v.manifest, i, v.blocks[i]).ok()) << i;
  }
  // The store's own fields may change after the seal.
  v.manifest.set_created_unix_micros(123456);
  v.manifest.set_ttl_seconds(60);
  EXPECT_TRUE(VerifyManifestSeal(key, v.manifest).ok());
}

// The documented construction, recomputed with libcrypto's one-shot calls:
// tag = Poly1305(HMAC-SHA256(key, "krul-kv-block-v1\0" || salt || u32le
// index), encoded block).
TEST(KvMacTest, BlockTagIsTheDocumentedConstruction) {
  Version v = MakeVersion();
  const KvMacKey key = Key(kMasterHex);
  ASSERT_TRUE(Seal(key, v).ok());
  std::string msg("krul-kv-block-v1", 16);
  msg.push_back('\0');
  msg += v.manifest.seal().salt();
  internal::Append32(msg, 2);
  unsigned char one_time[32];
  unsigned int n = 0;
  HMAC(EVP_sha256(), key.data(), 32, reinterpret_cast<const unsigned char*>(msg.data()), msg.size(),
       one_time, &n);
  unsigned char tag[16];
  size_t tag_len = 0;
  ASSERT_NE(EVP_Q_mac(nullptr, "POLY1305", nullptr, nullptr, nullptr, one_time, 32,
                      reinterpret_cast<const unsigned char*>(v.blocks[2].data()),
                      v.blocks[2].size(), tag, sizeof(tag), &tag_len),
            nullptr);
  EXPECT_EQ(v.manifest.blocks(2).mac(), std::string(reinterpret_cast<const char*>(tag), tag_len));
}

TEST(KvMacTest, EachSealUsesAFreshSalt) {
  Version a = MakeVersion();
  Version b = MakeVersion();
  const KvMacKey key = Key(kMasterHex);
  ASSERT_TRUE(Seal(key, a).ok());
  ASSERT_TRUE(Seal(key, b).ok());
  EXPECT_NE(a.manifest.seal().salt(), b.manifest.seal().salt());
  EXPECT_NE(a.manifest.blocks(0).mac(), b.manifest.blocks(0).mac());
}

// What the attacker of issue 17 did: zeroed payloads, re-encoded (valid
// XXH3 in the header and the BlockRef), served as the next version with the
// victim's seal copied over.
TEST(KvMacTest, ZeroedBlocksWithValidChecksumsAreRejected) {
  Version v = MakeVersion();
  const KvMacKey key = Key(kMasterHex);
  ASSERT_TRUE(Seal(key, v).ok());
  v1::Manifest forged = v.manifest;
  forged.mutable_key()->set_turn(v.manifest.key().turn() + 1);
  std::vector<std::string> forged_blocks;
  for (int i = 0; i < forged.blocks_size(); ++i) {
    auto header = DecodeBlockHeader(v.blocks[i]);
    ASSERT_TRUE(header.ok());
    auto zeroed = EncodeBlock(*header, std::string(header->payload_bytes, '\0'));
    ASSERT_TRUE(zeroed.ok());
    ASSERT_TRUE(DecodeBlock(*zeroed).ok());  // the checksums are valid
    auto ref = MakeBlockRef(i, *zeroed);
    ASSERT_TRUE(ref.ok());
    ref->set_mac(v.manifest.blocks(i).mac());
    *forged.mutable_blocks(i) = *ref;
    forged_blocks.push_back(*zeroed);
  }
  EXPECT_TRUE(IsKvIntegrityError(VerifyManifestSeal(key, forged)));
  // Even at the same turn, keeping the sealed refs and so the sealed XXH3
  // values: a block that matches the ref's checksum (an XXH3 collision a
  // writer can craft) still fails its tag.
  for (uint32_t i = 0; i < forged_blocks.size(); ++i) {
    absl::Status s = VerifyBlockMac(key, v.manifest, i, forged_blocks[i]);
    EXPECT_TRUE(IsKvIntegrityError(s)) << s;
  }
}

TEST(KvMacTest, EveryChangedByteOfABlockIsRejected) {
  Version v = MakeVersion();
  const KvMacKey key = Key(kMasterHex);
  ASSERT_TRUE(Seal(key, v).ok());
  std::string block = v.blocks[1];
  for (size_t i = 0; i < block.size(); ++i) {
    block[i] ^= 0x01;
    EXPECT_TRUE(IsKvIntegrityError(VerifyBlockMac(key, v.manifest, 1, block))) << i;
    block[i] ^= 0x01;
  }
  EXPECT_TRUE(VerifyBlockMac(key, v.manifest, 1, block).ok());
  EXPECT_TRUE(IsKvIntegrityError(VerifyBlockMac(key, v.manifest, 1, block + "x")));
  EXPECT_TRUE(IsKvIntegrityError(VerifyBlockMac(key, v.manifest, 1, block.substr(1))));
}

TEST(KvMacTest, BlocksCannotMoveBetweenIndicesOrVersions) {
  const KvMacKey key = Key(kMasterHex);
  Version v = MakeVersion();
  Version older = MakeVersion("alice", 2);  // same bytes, an earlier version
  ASSERT_TRUE(Seal(key, v).ok());
  ASSERT_TRUE(Seal(key, older).ok());
  EXPECT_TRUE(IsKvIntegrityError(VerifyBlockMac(key, v.manifest, 1, v.blocks[2])));
  EXPECT_TRUE(IsKvIntegrityError(VerifyBlockMac(key, v.manifest, 7, v.blocks[0])));
  // The older version's refs (and tags) spliced into this manifest.
  v1::Manifest spliced = v.manifest;
  *spliced.mutable_blocks(0) = older.manifest.blocks(0);
  EXPECT_TRUE(IsKvIntegrityError(VerifyManifestSeal(key, spliced)));
}

TEST(KvMacTest, AnotherTenantsKeyIsRejected) {
  auto ring = KvMacKeyring::Parse(kMasterHex);
  ASSERT_TRUE(ring.ok());
  // Bob's worker seals a version in its own name and key...
  Version v = MakeVersion("bob");
  ASSERT_TRUE(Seal(*ring->ForTenant("bob"), v).ok());
  ASSERT_TRUE(VerifyManifestSeal(*ring->ForTenant("bob"), v.manifest).ok());
  // ... and the store serves it as alice's.
  v.manifest.mutable_key()->set_tenant("alice");
  EXPECT_TRUE(IsKvIntegrityError(VerifyManifestSeal(*ring->ForTenant("alice"), v.manifest)));
  // Sealed with a key of alice's name that this worker does not hold.
  Version w = MakeVersion("alice");
  ASSERT_TRUE(Seal(Key(kOtherHex), w).ok());
  EXPECT_TRUE(IsKvIntegrityError(VerifyManifestSeal(*ring->ForTenant("alice"), w.manifest)));
  EXPECT_TRUE(
      IsKvIntegrityError(VerifyBlockMac(*ring->ForTenant("alice"), w.manifest, 0, w.blocks[0])));
}

TEST(KvMacTest, EveryFieldReadersUseIsCovered) {
  const KvMacKey key = Key(kMasterHex);
  Version v = MakeVersion();
  ASSERT_TRUE(Seal(key, v).ok());
  using Edit = std::function<void(v1::Manifest&)>;
  const std::vector<std::pair<std::string, Edit>> edits = {
      {"key.tenant", [](v1::Manifest& m) { m.mutable_key()->set_tenant("mallory"); }},
      {"key.conversation_id",
       [](v1::Manifest& m) { m.mutable_key()->set_conversation_id("conv-2"); }},
      {"key.turn", [](v1::Manifest& m) { m.mutable_key()->set_turn(4); }},
      {"model_id", [](v1::Manifest& m) { m.set_model_id("other"); }},
      {"n_layers", [](v1::Manifest& m) { m.set_n_layers(3); }},
      {"plan", [](v1::Manifest& m) { m.mutable_plan()->back() ^= 1; }},
      {"history_tokens", [](v1::Manifest& m) { m.set_history_tokens(15); }},
      {"stored_ranges.layer", [](v1::Manifest& m) { m.mutable_stored_ranges(0)->set_layer(1); }},
      {"stored_ranges.token_begin",
       [](v1::Manifest& m) { m.mutable_stored_ranges(1)->set_token_begin(1); }},
      {"stored_ranges.token_end",
       [](v1::Manifest& m) { m.mutable_stored_ranges(1)->set_token_end(15); }},
      {"stored_ranges dropped", [](v1::Manifest& m) { m.mutable_stored_ranges()->RemoveLast(); }},
      {"blocks.index", [](v1::Manifest& m) { m.mutable_blocks(1)->set_index(2); }},
      {"blocks.layer", [](v1::Manifest& m) { m.mutable_blocks(1)->set_layer(0); }},
      {"blocks.layer_pair", [](v1::Manifest& m) { m.mutable_blocks(1)->set_layer_pair(1); }},
      {"blocks.token_begin", [](v1::Manifest& m) { m.mutable_blocks(2)->set_token_begin(0); }},
      {"blocks.num_tokens", [](v1::Manifest& m) { m.mutable_blocks(2)->set_num_tokens(7); }},
      {"blocks.encoded_bytes", [](v1::Manifest& m) { m.mutable_blocks(0)->set_encoded_bytes(1); }},
      {"blocks.payload_xxh3", [](v1::Manifest& m) { m.mutable_blocks(0)->set_payload_xxh3(1); }},
      {"blocks.mac", [](v1::Manifest& m) { m.mutable_blocks(0)->mutable_mac()->at(0) ^= 1; }},
      {"blocks dropped", [](v1::Manifest& m) { m.mutable_blocks()->RemoveLast(); }},
      {"seal.version", [](v1::Manifest& m) { m.mutable_seal()->set_version(2); }},
      {"seal.salt", [](v1::Manifest& m) { m.mutable_seal()->mutable_salt()->at(3) ^= 1; }},
      {"seal.mac", [](v1::Manifest& m) { m.mutable_seal()->mutable_mac()->at(31) ^= 1; }},
      {"seal dropped", [](v1::Manifest& m) { m.clear_seal(); }},
  };
  for (const auto& [name, edit] : edits) {
    v1::Manifest m = v.manifest;
    edit(m);
    absl::Status s = VerifyManifestSeal(key, m);
    EXPECT_TRUE(IsKvIntegrityError(s)) << name << ": " << s;
  }
  // A field added to the messages must be sealed or knowingly left out:
  // this list is what CanonicalManifestBytes covers and what it excludes.
  const std::set<std::string> manifest_fields = {
      "key",           "model_id", "n_layers",       "plan",
      "stored_ranges", "blocks",   "history_tokens", "created_unix_micros",
      "ttl_seconds",   "seal"};
  const std::set<std::string> ref_fields = {"index",        "layer",      "layer_pair",
                                            "token_begin",  "num_tokens", "encoded_bytes",
                                            "payload_xxh3", "mac"};
  auto names = [](const google::protobuf::Descriptor* d) {
    std::set<std::string> out;
    for (int i = 0; i < d->field_count(); ++i) out.insert(d->field(i)->name());
    return out;
  };
  EXPECT_EQ(names(v1::Manifest::descriptor()), manifest_fields);
  EXPECT_EQ(names(v1::BlockRef::descriptor()), ref_fields);
  EXPECT_EQ(v1::LayerRange::descriptor()->field_count(), 3);
  EXPECT_EQ(v1::ConversationKey::descriptor()->field_count(), 3);
}

TEST(KvMacTest, UnsealedAndMalformedSealsAreIntegrityErrors) {
  const KvMacKey key = Key(kMasterHex);
  Version v = MakeVersion();
  EXPECT_TRUE(IsKvIntegrityError(VerifyManifestSeal(key, v.manifest)));
  ASSERT_TRUE(Seal(key, v).ok());
  v1::Manifest short_salt = v.manifest;
  short_salt.mutable_seal()->mutable_salt()->pop_back();
  EXPECT_TRUE(IsKvIntegrityError(VerifyManifestSeal(key, short_salt)));
  v1::Manifest no_tag = v.manifest;
  no_tag.mutable_blocks(0)->clear_mac();
  EXPECT_TRUE(IsKvIntegrityError(VerifyBlockMac(key, no_tag, 0, v.blocks[0])));
  // Plain corruption is not an integrity error; a copy of one still is.
  EXPECT_FALSE(IsKvIntegrityError(absl::DataLossError("checksum")));
  absl::Status copy = KvIntegrityError("x");
  EXPECT_TRUE(IsKvIntegrityError(copy));
  EXPECT_EQ(copy.code(), absl::StatusCode::kDataLoss);
  // Oversized tags are refused by manifest validation.
  v1::Manifest big = v.manifest;
  big.mutable_blocks(0)->set_mac(std::string(kMaxMacBytes + 1, 'x'));
  EXPECT_EQ(ValidateManifest(big).code(), absl::StatusCode::kInvalidArgument);
}

TEST(KvMacTest, SealNeedsOneBlockPerRef) {
  Version v = MakeVersion();
  std::vector<std::string_view> two = {v.blocks[0], v.blocks[1]};
  EXPECT_EQ(SealManifest(Key(kMasterHex), two, v.manifest).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace krul
