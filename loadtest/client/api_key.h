// The API key the load tools send to workers started with --api_keys_file
// (docs/security.md): the --api_key flag, else the environment, as OpenAI
// clients find theirs. The key is a secret: callers send it as
// "Authorization: Bearer <key>" and print or record only its source.
#ifndef KRUL_LOADTEST_CLIENT_API_KEY_H_
#define KRUL_LOADTEST_CLIENT_API_KEY_H_

#include <string>

namespace krul::loadtest {

struct ApiKey {
  std::string key;     // empty: none (requests go without Authorization)
  std::string source;  // "--api_key", "KRUL_API_KEY", "OPENAI_API_KEY" or "none"
};

// `flag` when not empty, else $KRUL_API_KEY, else $OPENAI_API_KEY (an empty
// variable counts as unset), else none.
ApiKey ResolveApiKey(const std::string& flag);

// What to tell the user when workers answered 401 to a request sent with
// `key`: which key was refused, or how to give one. Never contains the key.
std::string UnauthorizedHint(const ApiKey& key);

}  // namespace krul::loadtest

#endif  // KRUL_LOADTEST_CLIENT_API_KEY_H_
