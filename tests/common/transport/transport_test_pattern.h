// The byte pattern the transport tests and their child-process peer agree on:
// a splitmix64 stream, so both sides know the expected bytes of every check
// without sending them.
#ifndef KRUL_TESTS_COMMON_TRANSPORT_TRANSPORT_TEST_PATTERN_H_
#define KRUL_TESTS_COMMON_TRANSPORT_TRANSPORT_TEST_PATTERN_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace krul::testing {

inline void FillPattern(uint8_t* data, size_t size, uint64_t seed) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < size; i += 8) {
    uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    std::memcpy(data + i, &z, std::min<size_t>(8, size - i));
  }
}

}  // namespace krul::testing

#endif  // KRUL_TESTS_COMMON_TRANSPORT_TRANSPORT_TEST_PATTERN_H_
