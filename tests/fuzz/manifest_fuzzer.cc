// Fuzzes manifests (krul/kvformat/manifest.h): the stored frame a kvstore
// reads back from RocksDB, and the bare krul.v1.Manifest a Put RPC carries.
//
// Input: one mode byte, then the bytes.
//   mode % 3 == 0: a stored frame, decoded as is;
//   mode % 3 == 1: a stored frame whose magic, version, sizes and checksum
//                  the harness makes right first (random bytes never carry
//                  a valid XXH3), so mutations reach the proto and the
//                  validation behind the frame;
//   mode % 3 == 2: bare proto bytes, as a request field.
// Properties: nothing crashes; errors have the documented codes; a manifest
// that validates survives EncodeStoredManifest / DecodeStoredManifest and
// still validates; a stored frame that decodes is rejected once a byte of it
// is flipped.
#include <xxhash.h>

#include <cstdint>
#include <string>

#include "fuzz_util.h"
#include "krul/base/byte_order.h"
#include "krul/kvformat/manifest.h"

namespace {

// The frame (docs/formats/manifest.md): u32 magic, u16 version, u16 header
// bytes, u64 proto length, u64 checksum = XXH3-64 of the proto seeded with
// the XXH3-64 of the first 16 frame bytes.
void StampFrame(std::string* bytes) {
  if (bytes->size() < krul::kStoredManifestHeaderBytes) return;
  char* h = bytes->data();
  const std::string_view proto = std::string_view(*bytes).substr(krul::kStoredManifestHeaderBytes);
  krul::internal::Put32(h, krul::kStoredManifestMagic);
  krul::internal::Put16(h + 4, krul::kStoredManifestVersion);
  krul::internal::Put16(h + 6, static_cast<uint16_t>(krul::kStoredManifestHeaderBytes));
  krul::internal::Put64(h + 8, proto.size());
  krul::internal::Put64(h + 16,
                        XXH3_64bits_withSeed(proto.data(), proto.size(), XXH3_64bits(h, 16)));
}

void CheckValidManifest(const krul::v1::Manifest& manifest) {
  (void)krul::ManifestBlockBytes(manifest);
  for (const krul::v1::BlockRef& ref : manifest.blocks()) {
    // A ref never accepts bytes that are not a block of its size.
    FUZZ_CHECK(!krul::VerifyBlock(ref, std::string(16, '\0')).ok());
  }
  const std::string stored = krul::EncodeStoredManifest(manifest);
  absl::StatusOr<krul::v1::Manifest> again = krul::DecodeStoredManifest(stored);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(krul::ValidateManifest(*again).ok());
  FUZZ_CHECK(again->SerializeAsString() == manifest.SerializeAsString());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const int mode = data[0] % 3;
  std::string bytes(krul::fuzz::AsView(data + 1, size - 1));

  if (mode == 2) {
    krul::v1::Manifest manifest;
    if (!manifest.ParseFromString(bytes)) return 0;
    absl::Status valid = krul::ValidateManifest(manifest);
    if (!valid.ok()) {
      FUZZ_CHECK(absl::IsInvalidArgument(valid));
      return 0;
    }
    CheckValidManifest(manifest);
    return 0;
  }

  if (mode == 1) StampFrame(&bytes);
  absl::StatusOr<krul::v1::Manifest> manifest = krul::DecodeStoredManifest(bytes);
  if (!manifest.ok()) {
    FUZZ_CHECK(absl::IsDataLoss(manifest.status()) || absl::IsUnimplemented(manifest.status()));
    return 0;
  }
  // Every byte of a frame that decodes is covered by its checksum.
  for (size_t i : {size_t{0}, size_t{9}, size_t{17}, bytes.size() / 2, bytes.size() - 1}) {
    std::string flipped = bytes;
    flipped[i] ^= 0x20;
    FUZZ_CHECK(!krul::DecodeStoredManifest(flipped).ok());
  }
  absl::Status valid = krul::ValidateManifest(*manifest);
  if (!valid.ok()) {
    FUZZ_CHECK(absl::IsInvalidArgument(valid));
    return 0;
  }
  CheckValidManifest(*manifest);
  return 0;
}
