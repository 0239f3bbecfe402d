#include "client/api_key.h"

#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace krul::loadtest {

ApiKey ResolveApiKey(const std::string& flag) {
  if (!flag.empty()) return {flag, "--api_key"};
  for (const char* name : {"KRUL_API_KEY", "OPENAI_API_KEY"}) {
    const char* value = std::getenv(name);
    if (value != nullptr && value[0] != '\0') return {value, name};
  }
  return {"", "none"};
}

std::string UnauthorizedHint(const ApiKey& key) {
  if (key.key.empty()) {
    return "the workers need an API key (they run with --api_keys_file): pass --api_key, or set "
           "KRUL_API_KEY (or OPENAI_API_KEY)";
  }
  return absl::StrCat("the workers refused the API key from ", key.source,
                      ": it is not in their --api_keys_file (compare its SHA-256 with the file's "
                      "lines: krul-kvstore hash-token TENANT < key-file)");
}

}  // namespace krul::loadtest
