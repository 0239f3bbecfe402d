#include "krul/kvformat/kv_mac.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include <fstream>
#include <memory>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "krul/base/byte_order.h"

namespace krul {
namespace {

using internal::Append32;
using internal::Append64;

constexpr absl::string_view kIntegrityPayloadUrl = "krul.dev/kv-integrity";
constexpr std::string_view kHkdfSalt = "krul-kv-mac-v1";
// Domain separation: the two uses of a tenant key MAC different prefixes.
constexpr std::string_view kManifestDomain = std::string_view("krul-kv-manifest-v1\0", 20);
constexpr std::string_view kBlockDomain = std::string_view("krul-kv-block-v1\0", 17);

// Debian's Abseil has its own string_view type.
absl::string_view AsAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

absl::Status CryptoError(std::string_view what) {
  const unsigned long e = ERR_get_error();  // NOLINT(runtime/int): OpenSSL's type
  char buf[256] = {0};
  if (e != 0) ERR_error_string_n(e, buf, sizeof(buf));
  ERR_clear_error();
  return absl::InternalError(
      absl::StrCat("libcrypto: ", AsAbsl(what), " failed", e != 0 ? ": " : "", buf));
}

// EVP_MAC algorithms, fetched once (fetching takes a lock and a lookup; the
// fetched object is immutable and shared by threads).
const EVP_MAC* HmacAlgorithm() {
  static EVP_MAC* const mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  return mac;
}
const EVP_MAC* Poly1305Algorithm() {
  static EVP_MAC* const mac = EVP_MAC_fetch(nullptr, "POLY1305", nullptr);
  return mac;
}

struct MacCtxFree {
  void operator()(EVP_MAC_CTX* c) const { EVP_MAC_CTX_free(c); }
};
using MacCtx = std::unique_ptr<EVP_MAC_CTX, MacCtxFree>;

// HMAC-SHA256 of the concatenation of `pieces` under `key` (32 bytes out).
absl::Status HmacSha256(const unsigned char* key, size_t key_bytes,
                        std::initializer_list<std::string_view> pieces, unsigned char* out) {
  if (HmacAlgorithm() == nullptr) return CryptoError("fetching HMAC");
  MacCtx ctx(EVP_MAC_CTX_new(const_cast<EVP_MAC*>(HmacAlgorithm())));
  if (ctx == nullptr) return CryptoError("EVP_MAC_CTX_new");
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                         OSSL_PARAM_construct_end()};
  if (EVP_MAC_init(ctx.get(), key, key_bytes, params) != 1) return CryptoError("HMAC init");
  for (std::string_view p : pieces) {
    if (EVP_MAC_update(ctx.get(), reinterpret_cast<const unsigned char*>(p.data()), p.size()) !=
        1) {
      return CryptoError("HMAC update");
    }
  }
  size_t n = 0;
  if (EVP_MAC_final(ctx.get(), out, &n, kManifestMacBytes) != 1 || n != kManifestMacBytes) {
    return CryptoError("HMAC final");
  }
  return absl::OkStatus();
}

void AppendBytes(std::string& out, std::string_view bytes) {
  Append64(out, bytes.size());
  out.append(bytes);
}

bool ConstantTimeEqual(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace

// ---- keys -----------------------------------------------------------------

KvMacKey::~KvMacKey() { OPENSSL_cleanse(bytes_.data(), bytes_.size()); }

absl::StatusOr<KvMacKey> KvMacKey::FromBytes(std::string_view bytes) {
  if (bytes.size() != kKvMacKeyBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("a KV MAC key is ", kKvMacKeyBytes, " bytes; got ", bytes.size()));
  }
  KvMacKey key;
  std::copy(bytes.begin(), bytes.end(), key.bytes_.begin());
  return key;
}

absl::StatusOr<KvMacKey> KvMacKey::FromHex(std::string_view hex) {
  bool valid = hex.size() == 2 * kKvMacKeyBytes;
  for (char c : hex) valid = valid && absl::ascii_isxdigit(static_cast<unsigned char>(c));
  if (!valid) {
    return absl::InvalidArgumentError(absl::StrCat("a KV MAC key is ", 2 * kKvMacKeyBytes,
                                                   " hex digits (openssl rand -hex ",
                                                   kKvMacKeyBytes, ")"));
  }
  std::string bytes = absl::HexStringToBytes(AsAbsl(hex));
  auto key = FromBytes(bytes);
  OPENSSL_cleanse(bytes.data(), bytes.size());
  return key;
}

absl::StatusOr<KvMacKeyring> KvMacKeyring::Parse(std::string_view text) {
  KvMacKeyring ring;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(AsAbsl(text), '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    const size_t colon = line.rfind(':');
    absl::string_view tenant;
    absl::string_view hex = line;
    if (colon != absl::string_view::npos) {
      tenant = absl::StripAsciiWhitespace(line.substr(0, colon));
      hex = absl::StripAsciiWhitespace(line.substr(colon + 1));
      if (tenant.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("KV MAC key file line ", line_number, ": empty tenant before ':'"));
      }
    }
    auto key = KvMacKey::FromHex(std::string_view(hex.data(), hex.size()));
    if (!key.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("KV MAC key file line ", line_number, ": ", key.status().message()));
    }
    if (tenant.empty()) {
      if (ring.master_.has_value()) {
        return absl::InvalidArgumentError(
            absl::StrCat("KV MAC key file line ", line_number, ": a second master key"));
      }
      ring.master_ = *std::move(key);
    } else {
      if (ring.tenants_.count(std::string(tenant)) > 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("KV MAC key file line ", line_number, ": tenant '", tenant, "' repeated"));
      }
      ring.tenants_.emplace(std::string(tenant), *std::move(key));
    }
  }
  if (!ring.master_.has_value() && ring.tenants_.empty()) {
    return absl::InvalidArgumentError("KV MAC key file holds no key");
  }
  return ring;
}

absl::StatusOr<KvMacKeyring> KvMacKeyring::ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read KV MAC key file ", path));
  std::stringstream text;
  text << in.rdbuf();
  std::string contents = text.str();
  auto ring = Parse(contents);
  OPENSSL_cleanse(contents.data(), contents.size());
  if (!ring.ok()) {
    return absl::Status(ring.status().code(), absl::StrCat(path, ": ", ring.status().message()));
  }
  return ring;
}

KvMacKeyring KvMacKeyring::FromMasterKey(KvMacKey master) {
  KvMacKeyring ring;
  ring.master_ = std::move(master);
  return ring;
}

void KvMacKeyring::SetTenantKey(const std::string& tenant, KvMacKey key) {
  tenants_.insert_or_assign(tenant, std::move(key));
}

absl::StatusOr<KvMacKey> KvMacKeyring::ForTenant(std::string_view tenant) const {
  if (auto it = tenants_.find(tenant); it != tenants_.end()) return it->second;
  if (!master_.has_value()) {
    return absl::NotFoundError(
        absl::StrCat("no KV MAC key for tenant '", AsAbsl(tenant), "' and no master key"));
  }
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  if (kdf == nullptr) return CryptoError("fetching HKDF");
  EVP_KDF_CTX* ctx = EVP_KDF_CTX_new(kdf);
  EVP_KDF_free(kdf);
  if (ctx == nullptr) return CryptoError("EVP_KDF_CTX_new");
  char digest[] = "SHA256";
  std::string salt(kHkdfSalt);
  std::string info(tenant);
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_octet_string(
          OSSL_KDF_PARAM_KEY, const_cast<unsigned char*>(master_->data()), KvMacKey::size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, salt.data(), salt.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info.data(), info.size()),
      OSSL_PARAM_construct_end()};
  unsigned char out[kKvMacKeyBytes];
  const int ok = EVP_KDF_derive(ctx, out, sizeof(out), params);
  EVP_KDF_CTX_free(ctx);
  if (ok != 1) return CryptoError("HKDF derive");
  auto key = KvMacKey::FromBytes(std::string_view(reinterpret_cast<const char*>(out), sizeof(out)));
  OPENSSL_cleanse(out, sizeof(out));
  return key;
}

// ---- seal -----------------------------------------------------------------

std::string CanonicalManifestBytes(const v1::Manifest& m) {
  // Every field a reader relies on, each fixed-width or length-prefixed so
  // no two manifests encode alike; the seal's own tag and the store's
  // fields (created_unix_micros, ttl_seconds) are left out.
  std::string out(kManifestDomain);
  Append32(out, m.seal().version());
  AppendBytes(out, m.seal().salt());
  AppendBytes(out, m.key().tenant());
  AppendBytes(out, m.key().conversation_id());
  Append32(out, m.key().turn());
  AppendBytes(out, m.model_id());
  Append32(out, m.n_layers());
  AppendBytes(out, m.plan());
  Append32(out, m.history_tokens());
  Append64(out, static_cast<uint64_t>(m.stored_ranges_size()));
  for (const v1::LayerRange& r : m.stored_ranges()) {
    Append32(out, r.layer());
    Append32(out, r.token_begin());
    Append32(out, r.token_end());
  }
  Append64(out, static_cast<uint64_t>(m.blocks_size()));
  for (const v1::BlockRef& b : m.blocks()) {
    Append32(out, b.index());
    Append32(out, b.layer());
    Append32(out, b.layer_pair());
    Append32(out, b.token_begin());
    Append32(out, b.num_tokens());
    Append64(out, b.encoded_bytes());
    Append64(out, b.payload_xxh3());
    AppendBytes(out, b.mac());
  }
  return out;
}

absl::StatusOr<std::string> BlockMac(const KvMacKey& key, std::string_view salt, uint32_t index,
                                     std::string_view encoded) {
  // A Poly1305 key must never tag two messages: this one is a PRF of the
  // tenant key, the version's fresh random salt and the block index, so it
  // differs for every block ever written (up to a 2^-128 salt collision).
  std::string index_bytes;
  Append32(index_bytes, index);
  unsigned char one_time[kManifestMacBytes];
  if (auto s =
          HmacSha256(key.data(), KvMacKey::size(), {kBlockDomain, salt, index_bytes}, one_time);
      !s.ok()) {
    return s;
  }
  if (Poly1305Algorithm() == nullptr) return CryptoError("fetching POLY1305");
  MacCtx ctx(EVP_MAC_CTX_new(const_cast<EVP_MAC*>(Poly1305Algorithm())));
  absl::Status status;
  std::string tag(kBlockMacBytes, '\0');
  size_t n = 0;
  if (ctx == nullptr) {
    status = CryptoError("EVP_MAC_CTX_new");
  } else if (EVP_MAC_init(ctx.get(), one_time, sizeof(one_time), nullptr) != 1) {
    status = CryptoError("Poly1305 init");
  } else if (EVP_MAC_update(ctx.get(), reinterpret_cast<const unsigned char*>(encoded.data()),
                            encoded.size()) != 1) {
    status = CryptoError("Poly1305 update");
  } else if (EVP_MAC_final(ctx.get(), reinterpret_cast<unsigned char*>(tag.data()), &n,
                           tag.size()) != 1 ||
             n != kBlockMacBytes) {
    status = CryptoError("Poly1305 final");
  }
  OPENSSL_cleanse(one_time, sizeof(one_time));
  if (!status.ok()) return status;
  return tag;
}

absl::Status SealManifest(const KvMacKey& key, std::span<const std::string_view> blocks,
                          v1::Manifest& manifest) {
  if (blocks.size() != static_cast<size_t>(manifest.blocks_size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sealing ", blocks.size(), " blocks; the manifest names ", manifest.blocks_size()));
  }
  if (!manifest.has_key()) return absl::InvalidArgumentError("sealing a manifest without a key");
  unsigned char salt[kSealSaltBytes];
  if (RAND_bytes(salt, sizeof(salt)) != 1) return CryptoError("RAND_bytes");
  v1::ManifestSeal* seal = manifest.mutable_seal();
  seal->set_version(kManifestSealVersion);
  seal->set_salt(salt, sizeof(salt));
  seal->clear_mac();
  for (size_t i = 0; i < blocks.size(); ++i) {
    auto tag = BlockMac(key, seal->salt(), static_cast<uint32_t>(i), blocks[i]);
    if (!tag.ok()) return tag.status();
    manifest.mutable_blocks(static_cast<int>(i))->set_mac(*std::move(tag));
  }
  unsigned char mac[kManifestMacBytes];
  if (auto s = HmacSha256(key.data(), KvMacKey::size(), {CanonicalManifestBytes(manifest)}, mac);
      !s.ok()) {
    return s;
  }
  seal->set_mac(mac, sizeof(mac));
  return absl::OkStatus();
}

absl::Status VerifyManifestSeal(const KvMacKey& key, const v1::Manifest& manifest) {
  if (!manifest.has_seal()) {
    return KvIntegrityError(
        "KV version is not sealed (written by a worker without a KV MAC key, or the seal was "
        "stripped)");
  }
  const v1::ManifestSeal& seal = manifest.seal();
  if (seal.version() != kManifestSealVersion) {
    return KvIntegrityError(absl::StrCat("KV version sealed in seal version ", seal.version(),
                                         "; this worker verifies version ", kManifestSealVersion));
  }
  if (seal.salt().size() != kSealSaltBytes || seal.mac().size() != kManifestMacBytes) {
    return KvIntegrityError("KV version seal is malformed");
  }
  unsigned char mac[kManifestMacBytes];
  if (auto s = HmacSha256(key.data(), KvMacKey::size(), {CanonicalManifestBytes(manifest)}, mac);
      !s.ok()) {
    return s;
  }
  if (!ConstantTimeEqual(std::string_view(reinterpret_cast<const char*>(mac), sizeof(mac)),
                         seal.mac())) {
    return KvIntegrityError(
        "KV version seal does not verify: written with another key (another tenant's, or "
        "before a key change) or changed after it was written");
  }
  return absl::OkStatus();
}

absl::Status VerifyBlockMac(const KvMacKey& key, const v1::Manifest& manifest, uint32_t index,
                            std::string_view encoded) {
  if (index >= static_cast<uint32_t>(manifest.blocks_size())) {
    return KvIntegrityError(absl::StrCat("KV block ", index, " is not in the sealed version"));
  }
  const std::string& want = manifest.blocks(static_cast<int>(index)).mac();
  if (want.size() != kBlockMacBytes) {
    return KvIntegrityError(absl::StrCat("KV block ", index, " has no tag"));
  }
  auto tag = BlockMac(key, manifest.seal().salt(), index, encoded);
  if (!tag.ok()) return tag.status();
  if (!ConstantTimeEqual(*tag, want)) {
    return KvIntegrityError(absl::StrCat("KV block ", index,
                                         " does not match its tag: not the block the key holder "
                                         "wrote there"));
  }
  return absl::OkStatus();
}

absl::Status KvIntegrityError(std::string_view message) {
  absl::Status s = absl::DataLossError(AsAbsl(message));
  s.SetPayload(kIntegrityPayloadUrl, absl::Cord("1"));
  return s;
}

bool IsKvIntegrityError(const absl::Status& status) {
  return status.GetPayload(kIntegrityPayloadUrl).has_value();
}

}  // namespace krul
