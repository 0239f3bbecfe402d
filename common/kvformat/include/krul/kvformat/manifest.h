// Manifests: the commit record of one conversation version in the KV store.
//
// A manifest (krul.v1.Manifest, proto/krul/v1/kvstore.proto) names the model,
// the compression plan (opaque bytes), the tokens stored per layer and every
// block with its size and payload checksum. The store writes it last, so a
// version is visible exactly when its manifest is. Readers check each block
// they receive against the manifest's BlockRef (VerifyBlock), so a block that
// was swapped, truncated or corrupted anywhere is reported as DATA_LOSS.
//
// On disk a manifest is framed with its own checksum (EncodeStoredManifest;
// layout in docs/formats/manifest.md).
//
// All functions are thread-safe (no shared state).
#ifndef KRUL_KVFORMAT_MANIFEST_H_
#define KRUL_KVFORMAT_MANIFEST_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/kvformat/kv_block.h"
#include "krul/v1/kvstore.pb.h"

namespace krul {

// Limits that keep a hostile or buggy manifest from exhausting memory.
inline constexpr size_t kMaxTenantBytes = 128;
inline constexpr size_t kMaxConversationIdBytes = 512;
inline constexpr size_t kMaxModelIdBytes = 256;
inline constexpr size_t kMaxPlanBytes = 1 << 20;
inline constexpr uint32_t kMaxManifestLayers = 4096;
inline constexpr size_t kMaxManifestBlocks = 1 << 20;
// Seal salt and tags (kv_mac.h) are at most this long.
inline constexpr size_t kMaxMacBytes = 64;

inline constexpr uint32_t kStoredManifestMagic = 0x464D524Bu;  // Bytes "KRMF".
inline constexpr uint16_t kStoredManifestVersion = 1;
inline constexpr size_t kStoredManifestHeaderBytes = 24;

// OK when tenant and conversation_id are non-empty and within their limits.
// INVALID_ARGUMENT naming the field otherwise.
absl::Status ValidateConversationKey(const v1::ConversationKey& key);

// OK when the manifest is internally consistent: a valid key, a model id,
// 1 <= n_layers <= kMaxManifestLayers, the plan within kMaxPlanBytes,
// stored ranges on distinct layers below n_layers with begin <= end, and
// blocks[i].index == i, layers below n_layers, encoded_bytes that can hold a
// header and a payload of at most kMaxBlockPayloadBytes, block tags and the
// seal's salt and tag within kMaxMacBytes (their meaning is kv_mac.h's).
// INVALID_ARGUMENT naming the first offending field otherwise.
absl::Status ValidateManifest(const v1::Manifest& manifest);

// Sum of blocks[].encoded_bytes: what the version occupies in the store.
uint64_t ManifestBlockBytes(const v1::Manifest& manifest);

// The BlockRef describing `encoded` as block `index`. Decodes and verifies
// the whole block; returns its status (DATA_LOSS/UNIMPLEMENTED) on failure.
absl::StatusOr<v1::BlockRef> MakeBlockRef(uint32_t index, std::string_view encoded);

// Decodes `encoded` and checks that it is the block `ref` describes (size,
// payload checksum, layer, pair and token range). DATA_LOSS on any mismatch
// or decode failure, UNIMPLEMENTED for a newer block format. The returned
// payload views `encoded`. `payload_xxh3` as in DecodeBlock.
absl::StatusOr<DecodedBlock> VerifyBlock(const v1::BlockRef& ref, std::string_view encoded,
                                         std::optional<uint64_t> payload_xxh3 = std::nullopt);

// Serializes `manifest` with a 24-byte checksummed frame for storage.
std::string EncodeStoredManifest(const v1::Manifest& manifest);

// Inverse of EncodeStoredManifest. DATA_LOSS when the frame is short, its
// magic, length or checksum is wrong, or the proto does not parse;
// UNIMPLEMENTED for a newer frame version.
absl::StatusOr<v1::Manifest> DecodeStoredManifest(std::string_view bytes);

}  // namespace krul

#endif  // KRUL_KVFORMAT_MANIFEST_H_
