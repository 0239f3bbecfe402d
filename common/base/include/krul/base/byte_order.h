// Fixed-width integers in byte buffers, whatever the host's byte order and
// at any alignment. The one copy for the whole tree:
//
//  - little-endian (Put32 / Get32 / Append32 ...): the on-disk and on-wire
//    headers of KV blocks, stored manifests, compression plans and
//    transport frames;
//  - big-endian (AppendBigEndian / GetBigEndian): keys that must sort in
//    numeric order under a bytewise comparator (the kvstore's RocksDB keys).
//
// All functions are pure and thread-safe; `p` must hold `n` bytes.
#ifndef KRUL_BASE_BYTE_ORDER_H_
#define KRUL_BASE_BYTE_ORDER_H_

#include <cstdint>
#include <string>

namespace krul::internal {

// Writes the low `n` bytes (n <= 8) of `v` at p, least significant first.
inline void PutLittleEndian(char* p, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
inline void Put16(char* p, uint16_t v) { PutLittleEndian(p, v, 2); }
inline void Put32(char* p, uint32_t v) { PutLittleEndian(p, v, 4); }
inline void Put64(char* p, uint64_t v) { PutLittleEndian(p, v, 8); }

// Reads `n` bytes (n <= 8) at p, least significant first.
inline uint64_t GetLittleEndian(const char* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}
inline uint16_t Get16(const char* p) { return static_cast<uint16_t>(GetLittleEndian(p, 2)); }
inline uint32_t Get32(const char* p) { return static_cast<uint32_t>(GetLittleEndian(p, 4)); }
inline uint64_t Get64(const char* p) { return GetLittleEndian(p, 8); }

// Appends the low `n` bytes (n <= 8) of `v` to `out`, least significant first.
inline void AppendLittleEndian(std::string& out, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
}
inline void Append16(std::string& out, uint16_t v) { AppendLittleEndian(out, v, 2); }
inline void Append32(std::string& out, uint32_t v) { AppendLittleEndian(out, v, 4); }
inline void Append64(std::string& out, uint64_t v) { AppendLittleEndian(out, v, 8); }

// Appends the low `n` bytes (n <= 8) of `v` to `out`, most significant first.
inline void AppendBigEndian(std::string& out, uint64_t v, int n) {
  for (int i = n - 1; i >= 0; --i) out.push_back(static_cast<char>(v >> (8 * i)));
}

// Reads `n` bytes (n <= 8) at p, most significant first.
inline uint64_t GetBigEndian(const char* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

}  // namespace krul::internal

#endif  // KRUL_BASE_BYTE_ORDER_H_
