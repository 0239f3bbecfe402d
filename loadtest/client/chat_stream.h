// One streamed chat completion (POST /v1/chat/completions with "stream":
// true and usage), timed the way load testers report it:
//   TTFT  request sent -> the first chunk whose delta carries text (the
//         worker's opening role-only chunk does not count); when an answer
//         has no text at all, the final chunk
//   e2e   request sent -> "data: [DONE]" (or the end of the stream)
//   TPOT  (last text chunk - first text chunk) / (completion_tokens - 1)
// and with what the worker reports in the final chunk's "krul" object and
// the usage chunk (openai_api.h).
//
// Not thread-safe, except Interrupt(): one StreamingChat per thread (it
// keeps one connection).
#ifndef KRUL_LOADTEST_CLIENT_CHAT_STREAM_H_
#define KRUL_LOADTEST_CLIENT_CHAT_STREAM_H_

#include <atomic>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/time/time.h"
#include "client/endpoint.h"

namespace httplib {
class Client;
}

namespace krul::loadtest {

struct ChatResult {
  int http_status = 0;  // 0: no response
  // Empty when the request succeeded, else one of: "http_<status>",
  // "context_length" (a 400 for a conversation longer than the model's
  // context), "unauthorized" (a 401: no API key, or one the worker does not
  // know), "timeout", "connection", "stream" (a broken or in-band error
  // stream), "cancelled" (Ctrl-C).
  std::string error_kind;
  std::string error;    // the message
  double ttft_ms = -1;  // -1: no token came
  double e2e_ms = 0;
  double tpot_ms = -1;  // -1: fewer than two tokens
  std::string content;  // the answer text
  std::string finish_reason;
  int prompt_tokens = 0;  // usage; 0 when not reported
  int completion_tokens = 0;
  nlohmann::json krul;  // the worker's "krul" object; null when absent

  bool ok() const { return error_kind.empty(); }
};

// object[field] when it is a number (or a string, for StringField), else
// `fallback`: servers other than Krul may send other types.
double NumberField(const nlohmann::json& object, const char* field, double fallback = 0);
std::string StringField(const nlohmann::json& object, const char* field,
                        const std::string& fallback = "");

class StreamingChat {
 public:
  // Times out a request after `request_timeout` in all, a connect after
  // `connect_timeout`. With `keep_alive` the connection is reused for the
  // next request; without, each request has its own ("Connection: close").
  // A non-empty `api_key` goes out as "Authorization: Bearer <api_key>" on
  // every request (the worker's --api_keys_file); it is never part of a
  // ChatResult, not even when a server echoes it in an error message.
  StreamingChat(const Endpoint& endpoint, absl::Duration connect_timeout,
                absl::Duration request_timeout, bool keep_alive = false,
                const std::string& api_key = "");
  ~StreamingChat();

  // Sends `request` (stream and stream_options.include_usage are set here).
  // Returns early with error_kind "cancelled" once *cancel becomes true.
  ChatResult Send(nlohmann::json request, const std::atomic<bool>& cancel);

  // Closes the connection from another thread, so a Send waiting for its
  // first byte returns at once (as "cancelled" when *cancel is set).
  void Interrupt();

 private:
  // `message` with the API key replaced.
  std::string Scrubbed(const std::string& message) const;

  absl::Duration request_timeout_;
  std::string api_key_;  // only to scrub it from error messages
  std::unique_ptr<httplib::Client> client_;
};

}  // namespace krul::loadtest

#endif  // KRUL_LOADTEST_CLIENT_CHAT_STREAM_H_
