// krul_transport_test_peer: the "server" half of the cross-process transport
// tests (transport_process_test.cc). It serves one region over UCX and
// answers line commands on stdin:
//   started as: krul_transport_test_peer <shm|tcp> <region bytes> <fill seed>
//   prints:     ADDR <hex address>\n DESC <hex descriptor of the whole region>\n
//   FILL <seed>                 -> OK          (refill the region)
//   CHECK <seed> <offset> <len> -> OK | BAD <i> (compare with the pattern)
//   EXIT                        -> exits 0
// The pattern is the tests' splitmix64 stream (same code as the tests).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

#include "absl/strings/escaping.h"
#include "common/transport/transport_test_pattern.h"
#include "krul/transport/transport.h"
#include "krul/transport/ucx_transport.h"

namespace {

using krul::testing::FillPattern;

int Fail(const std::string& what) {
  std::cout << "ERROR " << what << std::endl;
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) return Fail("usage: krul_transport_test_peer <shm|tcp> <bytes> <seed>");
  krul::UcxTransportOptions options;
  options.force_tcp = std::string(argv[1]) == "tcp";
  const size_t bytes = std::strtoull(argv[2], nullptr, 10);
  auto transport = krul::NewUcxTransport(options);
  if (!transport.ok()) return Fail(transport.status().ToString());
  auto region = (*transport)->AllocateRegion(bytes);
  if (!region.ok()) return Fail(region.status().ToString());
  FillPattern((*region)->data(), bytes, std::strtoull(argv[3], nullptr, 10));
  auto descriptor = (*region)->Describe(0, bytes);
  if (!descriptor.ok()) return Fail(descriptor.status().ToString());
  std::cout << "ADDR " << absl::BytesToHexString((*transport)->address()) << "\nDESC "
            << absl::BytesToHexString(*descriptor) << std::endl;

  std::string command;
  while (std::cin >> command) {
    if (command == "EXIT") return 0;
    if (command == "FILL") {
      uint64_t seed;
      std::cin >> seed;
      FillPattern((*region)->data(), bytes, seed);
      std::cout << "OK" << std::endl;
    } else if (command == "CHECK") {
      uint64_t seed, offset, length;
      std::cin >> seed >> offset >> length;
      if (offset > bytes || length > bytes - offset) {
        std::cout << "BAD range" << std::endl;
        continue;
      }
      std::string expected(length, '\0');
      FillPattern(reinterpret_cast<uint8_t*>(expected.data()), length, seed);
      const uint8_t* actual = (*region)->data() + offset;
      size_t i = 0;
      while (i < length && actual[i] == static_cast<uint8_t>(expected[i])) ++i;
      if (i == length) {
        std::cout << "OK" << std::endl;
      } else {
        std::cout << "BAD " << i << std::endl;
      }
    } else {
      return Fail("unknown command " + command);
    }
  }
  return 0;
}
