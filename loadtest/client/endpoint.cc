#include "client/endpoint.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace krul::loadtest {

std::string Endpoint::Name() const {
  return host.find(':') != std::string::npos ? absl::StrCat("[", host, "]:", port)
                                             : absl::StrCat(host, ":", port);
}

absl::StatusOr<Endpoint> ParseEndpoint(std::string_view text) {
  const std::string s(absl::StripAsciiWhitespace(absl::string_view(text.data(), text.size())));
  const size_t colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(absl::StrCat("address '", s, "' is not host:port"));
  }
  Endpoint e;
  e.host = s.substr(0, colon);
  if (e.host.size() >= 2 && e.host.front() == '[' && e.host.back() == ']') {
    e.host = e.host.substr(1, e.host.size() - 2);
  }
  if (!absl::SimpleAtoi(s.substr(colon + 1), &e.port) || e.port < 1 || e.port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("address '", s, "': the port must be an integer in [1, 65535]"));
  }
  return e;
}

absl::StatusOr<std::vector<Endpoint>> ParseEndpoints(std::string_view csv) {
  std::vector<Endpoint> out;
  for (absl::string_view item :
       absl::StrSplit(absl::string_view(csv.data(), csv.size()), ',', absl::SkipWhitespace())) {
    auto e = ParseEndpoint(std::string_view(item.data(), item.size()));
    if (!e.ok()) return e.status();
    out.push_back(*std::move(e));
  }
  if (out.empty()) return absl::InvalidArgumentError("no endpoint given (host:port,...)");
  return out;
}

}  // namespace krul::loadtest
