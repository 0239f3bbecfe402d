// A worker (or kvstore metrics) address as krul-loadtest takes it.
#ifndef KRUL_LOADTEST_CLIENT_ENDPOINT_H_
#define KRUL_LOADTEST_CLIENT_ENDPOINT_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace krul::loadtest {

struct Endpoint {
  std::string host;
  int port = 0;

  // "host:port" ("[v6]:port" for IPv6 literals).
  std::string Name() const;
  friend bool operator==(const Endpoint&, const Endpoint&) = default;
};

// "host:port" or "[v6]:port". INVALID_ARGUMENT naming the bad part.
absl::StatusOr<Endpoint> ParseEndpoint(std::string_view text);
// Comma-separated list; empty items are ignored. INVALID_ARGUMENT for a bad
// item or an empty list.
absl::StatusOr<std::vector<Endpoint>> ParseEndpoints(std::string_view csv);

}  // namespace krul::loadtest

#endif  // KRUL_LOADTEST_CLIENT_ENDPOINT_H_
