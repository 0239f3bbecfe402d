// The OpenAI-compatible wire format of POST /v1/chat/completions: request
// parsing and validation, response and stream-chunk JSON, SSE framing.
// Pure functions over nlohmann::json (no I/O), so they are unit-tested alone.
//
// Accepted request fields (docs/worker.md): model, messages (role system |
// developer | user | assistant; content a string or an array of
// {"type":"text","text":...} parts), max_tokens / max_completion_tokens,
// temperature, top_p, seed, stream, stream_options.include_usage, user, n
// (must be 1), and the Krul extensions conversation_id, krul_mode and
// return_token_ids. Fields the worker cannot honour and that would change
// the answer (tools, functions, stop, logprobs, response_format other than
// text, n > 1) are rejected with 400; other unknown fields are ignored, as
// OpenAI-compatible servers commonly do.
//
// The wire format links no engine (Abseil and nlohmann_json only), so
// clients such as the load tester use it without the worker.
//
// Thread-safe (no shared state).
#ifndef KRUL_SERVICES_WORKER_API_OPENAI_API_H_
#define KRUL_SERVICES_WORKER_API_OPENAI_API_H_

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/api/chat_message.h"

namespace krul::worker {

// An error as the HTTP layer returns it: status code and the OpenAI error
// object {"error": {"message", "type", "param", "code"}}.
struct ApiError {
  int http_status = 400;
  std::string type = "invalid_request_error";
  std::string message;
  std::string param;  // the offending field, or empty
  std::string code;   // machine-readable code, or empty

  nlohmann::json ToJson() const;
};

// Maps a Status from the session to an ApiError: INVALID_ARGUMENT and
// OUT_OF_RANGE -> 400, NOT_FOUND -> 404, RESOURCE_EXHAUSTED -> 429,
// UNAVAILABLE -> 503, DEADLINE_EXCEEDED -> 504, anything else -> 500.
ApiError ApiErrorFromStatus(const absl::Status& status);

// Checks a "krul_mode" name and returns its canonical spelling, or
// INVALID_ARGUMENT with a message for the client. The worker supplies it:
// the set of restore modes belongs to the restore library, which the wire
// format does not link.
using ModeNameCheck = std::function<absl::StatusOr<std::string>(std::string_view name)>;

struct RequestLimits {
  int default_max_tokens = 64;
  int max_tokens_limit = 4096;
  int max_messages = 1024;
  size_t max_content_bytes = 1 << 20;  // per message
  // Null: krul_mode is taken as sent (the worker checks it again).
  ModeNameCheck check_mode;
};

struct ChatRequest {
  std::string model;  // as sent; may be empty
  std::vector<ChatMessage> messages;
  int max_tokens = 64;
  float temperature = 1.0f;  // OpenAI's default
  float top_p = 1.0f;
  std::optional<uint64_t> seed;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  // conversation_id, else user; empty = key by the message prefix digest.
  std::string conversation_id;
  // krul_mode: a restore mode name (canonical when RequestLimits::check_mode
  // is set); absent = the worker's own mode.
  std::optional<std::string> mode;
  bool return_token_ids = false;
  // Who asked: the tenant of the request's API key, set by the front end
  // from the credential (never parsed from the body); it scopes
  // conversation_id (worker/session/tenant_scope.h). Empty: a worker
  // without API keys (one tenant).
  std::string tenant;
};

// Parses and validates a request body. On failure fills *error (always a
// 400 with the offending field in `param`) and returns nullopt: bad JSON, a
// body that is not an object, a field of the wrong type, empty messages, an
// unknown role, a trailing assistant message, non-text content parts,
// max_tokens < 1 or above the limit, temperature outside [0, 2], top_p
// outside (0, 1], n != 1, a krul_mode that limits.check_mode rejects, or an
// unsupported feature.
std::optional<ChatRequest> ParseChatRequest(std::string_view body, const RequestLimits& limits,
                                            ApiError* error);

// What the worker reports about one request (usage and Krul extensions).
// Where one restore's time went, in milliseconds (all zero unless the turn
// restored a stored history: restore == "hit"). The compute stream
// (recompute, prefill) and the load stream (load) run side by side.
struct RestoreProfile {
  double lookup_ms = 0;        // the manifest lookup (one RPC)
  double pin_ms = 0;           // the lease on the version (one RPC)
  double plan_ms = 0;          // re-planning at restore time (part of total_ms)
  double first_block_ms = 0;   // streamed read start -> first block arrived (grant + transfer)
  double blocks_ms = 0;        // streamed read start -> last block arrived
  double load_wait_ms = 0;     // load steps waiting for blocks to arrive
  double decode_ms = 0;        // load steps decoding blocks into the cache
  double load_ms = 0;          // load stream busy (wait + decode + writes)
  double load_latency_ms = 0;  // of which before its first bytes (estimated)
  double recompute_ms = 0;     // compute stream: history layers
  double prefill_ms = 0;       // compute stream: new input and logits, waits included
  double total_ms = 0;         // restore start -> logits (restore + prefill)
  double predicted_ms = 0;     // total_ms as the plan's cost model predicted it
  double bound_ms = 0;         // true lower bound of total_ms (restorer.h)
  double efficiency = 0;       // bound_ms / total_ms
};

struct CompletionStats {
  int prompt_tokens = 0;      // tokens the model saw before the answer
  int completion_tokens = 0;  // tokens generated (the stop token excluded)
  double ttft_ms = 0;         // request accepted -> first token sampled
  double queue_ms = 0;
  double restore_ms = 0;
  std::string mode;              // restore mode used
  std::string restore = "none";  // none | hit | miss | fallback
  std::string fallback_reason;   // set when restore == fallback
  int restored_tokens = 0;       // history tokens whose KV came back
  double recomputed_tokens = 0;  // of those, recomputed (mean over layers)
  double loaded_tokens = 0;      // of those, loaded (mean over layers)
  uint64_t loaded_bytes = 0;
  int prefilled_tokens = 0;  // new tokens run through the model
  std::string conversation_id;
  std::string worker_id;
  RestoreProfile profile;  // restore == "hit" only
  // "emulated" when the restore's loads were paced by the worker's
  // emulated link (a sleep, --emulate_link_gbit_per_s), else empty.
  std::string link;
};

// {"id", "object": "chat.completion", "created", "model", "choices": [...],
//  "usage": {prompt_tokens, completion_tokens, total_tokens,
//            prompt_tokens_details.cached_tokens, ttft_ms, restore_mode,
//            restored_tokens, recomputed_tokens, loaded_tokens},
//  "krul": {...}}; token_ids (the completion's) only when given.
nlohmann::json MakeCompletionJson(const std::string& id, int64_t created, const std::string& model,
                                  const std::string& content, const std::string& finish_reason,
                                  const CompletionStats& stats, const std::vector<int>* token_ids);

// The usage object shared by completions and the final stream chunk.
nlohmann::json MakeUsageJson(const CompletionStats& stats);
// The "krul" extension object (with "restore_profile" when the turn
// restored a history).
nlohmann::json MakeKrulJson(const CompletionStats& stats);

// One "chat.completion.chunk". `role` and `content` go into the delta when
// set; finish_reason is null unless given.
nlohmann::json MakeChunkJson(const std::string& id, int64_t created, const std::string& model,
                             const std::optional<std::string>& role,
                             const std::optional<std::string>& content,
                             const std::optional<std::string>& finish_reason);

// "data: <json>\n\n" (JSON on one line; invalid UTF-8 replaced).
std::string SseEvent(const nlohmann::json& data);
// "data: [DONE]\n\n"
std::string SseDone();

// The data payloads of an SSE stream, in order (the inverse of the framing
// above; "[DONE]" included as is). Lines other than "data:" are skipped.
std::vector<std::string> ParseSseData(std::string_view stream);

// Turns the bytes of decoded tokens into valid UTF-8 text as they arrive: a
// multi-byte character split over several byte tokens is held back until it
// is complete, and bytes that cannot start or continue a character become
// U+FFFD. Feeding everything and then Finish() gives the same text however
// the bytes were split.
class Utf8Stream {
 public:
  // Returns the text that became complete.
  std::string Append(std::string_view bytes);
  // Flushes an incomplete tail as U+FFFD.
  std::string Finish();

 private:
  std::string pending_;
};

// Utf8Stream over the whole input.
std::string SanitizeUtf8(std::string_view bytes);

}  // namespace krul::worker

#endif  // KRUL_SERVICES_WORKER_API_OPENAI_API_H_
