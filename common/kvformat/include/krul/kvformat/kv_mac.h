// Keyed integrity of stored KV against whoever can write to the store.
//
// Block and manifest checksums (XXH3) catch accidents, not a writer: anyone
// who can Put to the kvstore can zero a block, recompute its XXH3 and serve
// it. Here the *writer* of a version (a worker) seals it with its tenant's
// secret key, which workers hold and the store never sees, and a reader
// (another worker) verifies the seal before it uses anything from the
// version:
//
//   - every block gets a Poly1305 tag of its whole encoding (header and
//     payload), under a one-time key derived from the tenant key, a salt
//     drawn fresh for the version and the block's index (BlockRef.mac);
//   - the manifest gets an HMAC-SHA256 over a canonical encoding of what
//     readers rely on: the conversation key (tenant, id, turn), model id,
//     layers, plan (the session record: token ids), stored ranges and every
//     BlockRef with its tag (ManifestSeal). The store's own fields
//     (created_unix_micros, ttl_seconds) are not covered.
//
// So a block is accepted only if it is byte for byte the block the key
// holder wrote at that index of that version of that conversation. Byte
// layouts and the threat-model reasoning: docs/formats/manifest.md,
// docs/security.md. All crypto is OpenSSL's libcrypto (EVP_MAC, EVP_KDF).
//
// Failures are integrity errors: DATA_LOSS carrying a payload that
// IsKvIntegrityError recognises, so a caller can tell a forged or unsealed
// version from an accident and count it apart.
//
// Thread safety: the functions are thread-safe; KvMacKey and KvMacKeyring
// are immutable after construction and may be shared between threads.
#ifndef KRUL_KVFORMAT_KV_MAC_H_
#define KRUL_KVFORMAT_KV_MAC_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/v1/kvstore.pb.h"

namespace krul {

inline constexpr size_t kKvMacKeyBytes = 32;
inline constexpr uint32_t kManifestSealVersion = 1;
inline constexpr size_t kSealSaltBytes = 16;
inline constexpr size_t kManifestMacBytes = 32;  // HMAC-SHA256
inline constexpr size_t kBlockMacBytes = 16;     // Poly1305

// A 32-byte secret. Copyable; the bytes are wiped (OPENSSL_cleanse) when
// it is destroyed.
class KvMacKey {
 public:
  // INVALID_ARGUMENT unless `bytes` holds exactly kKvMacKeyBytes bytes.
  static absl::StatusOr<KvMacKey> FromBytes(std::string_view bytes);
  // INVALID_ARGUMENT unless `hex` is 2 * kKvMacKeyBytes hex digits.
  static absl::StatusOr<KvMacKey> FromHex(std::string_view hex);

  KvMacKey(const KvMacKey&) = default;
  KvMacKey& operator=(const KvMacKey&) = default;
  ~KvMacKey();

  const unsigned char* data() const { return bytes_.data(); }
  static constexpr size_t size() { return kKvMacKeyBytes; }

 private:
  KvMacKey() = default;
  std::array<unsigned char, kKvMacKeyBytes> bytes_{};
};

// The keys of the tenants a worker serves: one master key from which each
// tenant's key is derived (HKDF-SHA256, salt "krul-kv-mac-v1", info = the
// tenant name), and/or explicit keys for named tenants (they win over the
// derived one). Every worker that serves a tenant must hold the same key
// for it; the kvstore holds none.
class KvMacKeyring {
 public:
  KvMacKeyring() = default;

  // A key file: one key per line, 64 hex digits (32 bytes, e.g.
  // `openssl rand -hex 32`). A bare key is the master key (at most one);
  // `TENANT:KEY` is TENANT's own key. Blank lines and lines starting with
  // '#' are ignored. INVALID_ARGUMENT naming the line for anything else, a
  // second master key, a repeated tenant or a file without any key.
  static absl::StatusOr<KvMacKeyring> Parse(std::string_view text);
  // Parse of the file at `path`; its errors, NOT_FOUND / PERMISSION_DENIED
  // when it cannot be read.
  static absl::StatusOr<KvMacKeyring> ReadFile(const std::string& path);
  static KvMacKeyring FromMasterKey(KvMacKey master);

  // Adds an explicit key for `tenant` (replacing one it had).
  void SetTenantKey(const std::string& tenant, KvMacKey key);

  // The key of `tenant`. NOT_FOUND when the ring has neither an explicit
  // key for it nor a master key; INTERNAL when libcrypto fails.
  absl::StatusOr<KvMacKey> ForTenant(std::string_view tenant) const;

  bool has_master() const { return master_.has_value(); }
  size_t tenant_keys() const { return tenants_.size(); }

 private:
  std::optional<KvMacKey> master_;
  std::map<std::string, KvMacKey, std::less<>> tenants_;
};

// Seals a version: draws a fresh salt, sets manifest.blocks[i].mac to the
// tag of `blocks[i]` and manifest.seal to the MAC over the result. Call it
// after every field readers rely on is final (the store may still set its
// own: created_unix_micros, ttl_seconds). INVALID_ARGUMENT when
// blocks.size() differs from the manifest's block count or the manifest has
// no key; INTERNAL when libcrypto fails (e.g. no randomness).
absl::Status SealManifest(const KvMacKey& key, std::span<const std::string_view> blocks,
                          v1::Manifest& manifest);

// Verifies manifest.seal under `key`. An integrity error (see above) when
// the manifest is unsealed, sealed in an unknown seal version or with a
// malformed salt or tag, or when the MAC does not match (another key, or
// any covered field changed: a block's checksum or tag, the key, the plan,
// ...). Constant-time comparison.
absl::Status VerifyManifestSeal(const KvMacKey& key, const v1::Manifest& manifest);

// Verifies that `encoded` is block `index` of the sealed `manifest`: its
// Poly1305 tag under `key` equals manifest.blocks[index].mac. The caller
// must have verified the manifest's seal (the tag it holds is trusted only
// then). An integrity error on a mismatch, a missing or malformed tag or an
// index outside the manifest; INTERNAL when libcrypto fails.
absl::Status VerifyBlockMac(const KvMacKey& key, const v1::Manifest& manifest, uint32_t index,
                            std::string_view encoded);

// The tag VerifyBlockMac compares (exposed for the benchmark and tests).
absl::StatusOr<std::string> BlockMac(const KvMacKey& key, std::string_view salt, uint32_t index,
                                     std::string_view encoded);

// The canonical bytes the manifest MAC covers (exposed for tests).
std::string CanonicalManifestBytes(const v1::Manifest& manifest);

// DATA_LOSS with the integrity payload; IsKvIntegrityError is true of it
// (and of copies of it) only.
absl::Status KvIntegrityError(std::string_view message);
bool IsKvIntegrityError(const absl::Status& status);

}  // namespace krul

#endif  // KRUL_KVFORMAT_KV_MAC_H_
