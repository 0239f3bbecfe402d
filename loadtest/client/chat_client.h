// A small client of the worker's public HTTP API, shared by krul-replay and
// the integration tests: one chat completion, streamed (SSE) or not, timed
// on the client side.
//
// Not thread-safe: one client per thread (each holds one connection).
#ifndef KRUL_LOADTEST_CLIENT_CHAT_CLIENT_H_
#define KRUL_LOADTEST_CLIENT_CHAT_CLIENT_H_

#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace httplib {
class Client;
}

namespace krul::worker {

struct ChatReply {
  int http_status = 0;      // 0: no response (connection failed)
  std::string error;        // transport error, or the error message of a non-200
  std::string retry_after;  // Retry-After header, if any
  // Non-streaming: the whole JSON body. Streaming: the final chunk (the one
  // with finish_reason, which carries the "krul" stats) with "usage" from
  // the usage chunk when there was one.
  nlohmann::json body;
  std::vector<nlohmann::json> chunks;  // streaming: every chunk, in order
  bool done_marker = false;            // streaming: "data: [DONE]" seen
  std::string content;                 // the answer text
  std::string finish_reason;
  double ttft_ms = 0;   // request sent -> first byte of the answer
  double total_ms = 0;  // request sent -> response complete
};

class ChatClient {
 public:
  // A non-empty `api_key` goes out as "Authorization: Bearer <api_key>" on
  // every request (workers with --api_keys_file answer 401 without it); it
  // is replaced by "<api key>" in ChatReply::error should a server echo it.
  ChatClient(const std::string& host, int port, const std::string& api_key = "");
  ~ChatClient();

  using Headers = std::vector<std::pair<std::string, std::string>>;

  // POST /v1/chat/completions with `request` (its "stream" field decides
  // the mode) and any extra `headers`.
  ChatReply Chat(const nlohmann::json& request, const Headers& headers = {});
  // POST of raw bytes (for malformed-request tests).
  ChatReply PostRaw(const std::string& body, const Headers& headers = {});
  // GET `path`; returns (status, body).
  std::pair<int, std::string> Get(const std::string& path);

 private:
  // `reply.error` without the API key.
  void ScrubError(ChatReply& reply) const;

  std::string api_key_;
  std::unique_ptr<httplib::Client> client_;
};

// The value of a Prometheus sample `name{labels}` (labels as written, e.g.
// `reason="deadline"`, or empty) in a text exposition; 0 when absent.
double MetricValue(const std::string& exposition, const std::string& name,
                   const std::string& labels = "");

}  // namespace krul::worker

#endif  // KRUL_LOADTEST_CLIENT_CHAT_CLIENT_H_
