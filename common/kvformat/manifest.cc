#include "krul/kvformat/manifest.h"

#include <xxhash.h>

#include <vector>

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

// Checksum of a stored manifest: the first 16 frame bytes seed the hash of
// the proto bytes, so a flipped bit in either is caught.
uint64_t FrameChecksum(const char* frame16, std::string_view proto) {
  return XXH3_64bits_withSeed(proto.data(), proto.size(), XXH3_64bits(frame16, 16));
}

absl::Status Invalid(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat("manifest.", field, ": ", problem));
}

}  // namespace

absl::Status ValidateConversationKey(const v1::ConversationKey& key) {
  if (key.tenant().empty()) return absl::InvalidArgumentError("key.tenant is empty");
  if (key.tenant().size() > kMaxTenantBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("key.tenant is longer than ", kMaxTenantBytes, " bytes"));
  }
  if (key.conversation_id().empty()) {
    return absl::InvalidArgumentError("key.conversation_id is empty");
  }
  if (key.conversation_id().size() > kMaxConversationIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("key.conversation_id is longer than ", kMaxConversationIdBytes, " bytes"));
  }
  return absl::OkStatus();
}

absl::Status ValidateManifest(const v1::Manifest& m) {
  if (!m.has_key()) return Invalid("key", "missing");
  if (absl::Status s = ValidateConversationKey(m.key()); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("manifest.", s.message()));
  }
  if (m.model_id().empty()) return Invalid("model_id", "empty");
  if (m.model_id().size() > kMaxModelIdBytes) {
    return Invalid("model_id", absl::StrCat("longer than ", kMaxModelIdBytes, " bytes"));
  }
  if (m.n_layers() < 1 || m.n_layers() > kMaxManifestLayers) {
    return Invalid("n_layers",
                   absl::StrCat(m.n_layers(), " outside [1, ", kMaxManifestLayers, "]"));
  }
  if (m.plan().size() > kMaxPlanBytes) {
    return Invalid("plan", absl::StrCat(m.plan().size(), " bytes exceed ", kMaxPlanBytes));
  }
  if (static_cast<size_t>(m.stored_ranges_size()) > m.n_layers()) {
    return Invalid("stored_ranges", "more ranges than layers");
  }
  std::vector<bool> seen(m.n_layers(), false);
  for (int i = 0; i < m.stored_ranges_size(); ++i) {
    const v1::LayerRange& r = m.stored_ranges(i);
    std::string field = absl::StrCat("stored_ranges[", i, "]");
    if (r.layer() >= m.n_layers()) {
      return Invalid(field, absl::StrCat("layer ", r.layer(), " >= n_layers ", m.n_layers()));
    }
    if (seen[r.layer()]) return Invalid(field, absl::StrCat("layer ", r.layer(), " repeated"));
    seen[r.layer()] = true;
    if (r.token_end() < r.token_begin()) return Invalid(field, "token_end < token_begin");
  }
  if (static_cast<size_t>(m.blocks_size()) > kMaxManifestBlocks) {
    return Invalid("blocks", absl::StrCat("more than ", kMaxManifestBlocks));
  }
  for (int i = 0; i < m.blocks_size(); ++i) {
    const v1::BlockRef& b = m.blocks(i);
    std::string field = absl::StrCat("blocks[", i, "]");
    if (b.index() != static_cast<uint32_t>(i)) {
      return Invalid(field, absl::StrCat("index ", b.index(), " at position ", i));
    }
    if (b.layer() >= m.n_layers()) {
      return Invalid(field, absl::StrCat("layer ", b.layer(), " >= n_layers ", m.n_layers()));
    }
    if (b.layer_pair() != kNoLayerPair &&
        (b.layer_pair() <= b.layer() || b.layer_pair() >= m.n_layers())) {
      return Invalid(field, absl::StrCat("layer_pair ", b.layer_pair(), " invalid"));
    }
    if (b.encoded_bytes() < kBlockHeaderBytes ||
        b.encoded_bytes() > kBlockHeaderBytes + kMaxBlockPayloadBytes) {
      return Invalid(field, absl::StrCat("encoded_bytes ", b.encoded_bytes(), " out of range"));
    }
    if (b.mac().size() > kMaxMacBytes) {
      return Invalid(field, absl::StrCat("mac longer than ", kMaxMacBytes, " bytes"));
    }
  }
  if (m.seal().salt().size() > kMaxMacBytes || m.seal().mac().size() > kMaxMacBytes) {
    return Invalid("seal", absl::StrCat("salt or mac longer than ", kMaxMacBytes, " bytes"));
  }
  return absl::OkStatus();
}

uint64_t ManifestBlockBytes(const v1::Manifest& manifest) {
  uint64_t total = 0;
  for (const v1::BlockRef& b : manifest.blocks()) total += b.encoded_bytes();
  return total;
}

absl::StatusOr<v1::BlockRef> MakeBlockRef(uint32_t index, std::string_view encoded) {
  absl::StatusOr<DecodedBlock> block = DecodeBlock(encoded);
  if (!block.ok()) return block.status();
  v1::BlockRef ref;
  ref.set_index(index);
  ref.set_layer(block->header.layer);
  ref.set_layer_pair(block->header.layer_pair);
  ref.set_token_begin(block->header.token_begin);
  ref.set_num_tokens(block->header.num_tokens);
  ref.set_encoded_bytes(encoded.size());
  ref.set_payload_xxh3(block->header.payload_xxh3);
  return ref;
}

absl::StatusOr<DecodedBlock> VerifyBlock(const v1::BlockRef& ref, std::string_view encoded,
                                         std::optional<uint64_t> payload_xxh3) {
  if (encoded.size() != ref.encoded_bytes()) {
    return absl::DataLossError(absl::StrCat("block ", ref.index(), ": ", encoded.size(),
                                            " bytes, manifest says ", ref.encoded_bytes()));
  }
  absl::StatusOr<DecodedBlock> block = DecodeBlock(encoded, payload_xxh3);
  if (!block.ok()) {
    return absl::Status(block.status().code(),
                        absl::StrCat("block ", ref.index(), ": ", block.status().message()));
  }
  const BlockHeader& h = block->header;
  if (h.payload_xxh3 != ref.payload_xxh3() || h.layer != ref.layer() ||
      h.layer_pair != ref.layer_pair() || h.token_begin != ref.token_begin() ||
      h.num_tokens != ref.num_tokens()) {
    return absl::DataLossError(absl::StrCat("block ", ref.index(),
                                            ": not the block the manifest names (checksum or "
                                            "layer/token range differ)"));
  }
  return block;
}

std::string EncodeStoredManifest(const v1::Manifest& manifest) {
  std::string proto;
  manifest.SerializeToString(&proto);
  std::string out(kStoredManifestHeaderBytes + proto.size(), '\0');
  char* h = out.data();
  Put32(h, kStoredManifestMagic);
  Put16(h + 4, kStoredManifestVersion);
  Put16(h + 6, static_cast<uint16_t>(kStoredManifestHeaderBytes));
  Put64(h + 8, proto.size());
  Put64(h + 16, FrameChecksum(h, proto));
  std::copy(proto.begin(), proto.end(), out.begin() + kStoredManifestHeaderBytes);
  return out;
}

absl::StatusOr<v1::Manifest> DecodeStoredManifest(std::string_view bytes) {
  if (bytes.size() < kStoredManifestHeaderBytes) {
    return absl::DataLossError("stored manifest: shorter than its frame");
  }
  const char* h = bytes.data();
  if (Get32(h) != kStoredManifestMagic) return absl::DataLossError("stored manifest: bad magic");
  std::string_view proto = bytes.substr(kStoredManifestHeaderBytes);
  if (Get64(h + 8) != proto.size()) {
    return absl::DataLossError("stored manifest: length mismatch");
  }
  if (FrameChecksum(h, proto) != Get64(h + 16)) {
    return absl::DataLossError("stored manifest: checksum mismatch");
  }
  uint64_t version = Get16(h + 4);
  if (version > kStoredManifestVersion) {
    return absl::UnimplementedError(
        absl::StrCat("stored manifest: frame version ", version, " is newer than supported"));
  }
  if (version == 0 || Get16(h + 6) != kStoredManifestHeaderBytes) {
    return absl::DataLossError("stored manifest: bad version or header size");
  }
  v1::Manifest manifest;
  if (!manifest.ParseFromArray(proto.data(), static_cast<int>(proto.size()))) {
    return absl::DataLossError("stored manifest: proto does not parse");
  }
  return manifest;
}

}  // namespace krul
