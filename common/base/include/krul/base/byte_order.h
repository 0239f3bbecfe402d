// Little-endian fixed-width integers in byte buffers (internal): the on-disk
// and on-wire headers of KV blocks and stored manifests are little-endian
// whatever the host, and may sit at any alignment.
#ifndef KRUL_BASE_BYTE_ORDER_H_
#define KRUL_BASE_BYTE_ORDER_H_

#include <cstdint>

namespace krul::internal {

// Writes the low `n` bytes of `v` at p, least significant first.
inline void PutLittleEndian(char* p, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
inline void Put16(char* p, uint16_t v) { PutLittleEndian(p, v, 2); }
inline void Put32(char* p, uint32_t v) { PutLittleEndian(p, v, 4); }
inline void Put64(char* p, uint64_t v) { PutLittleEndian(p, v, 8); }

// Reads `n` bytes at p, least significant first.
inline uint64_t GetLittleEndian(const char* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}
inline uint16_t Get16(const char* p) { return static_cast<uint16_t>(GetLittleEndian(p, 2)); }
inline uint32_t Get32(const char* p) { return static_cast<uint32_t>(GetLittleEndian(p, 4)); }
inline uint64_t Get64(const char* p) { return GetLittleEndian(p, 8); }

}  // namespace krul::internal

#endif  // KRUL_BASE_BYTE_ORDER_H_
