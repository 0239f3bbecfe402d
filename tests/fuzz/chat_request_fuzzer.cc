// Fuzzes the worker's request parser (worker/api/openai_api.h,
// ParseChatRequest): the body of POST /v1/chat/completions, straight from
// the network.
//
// Input: the body. It is parsed twice: with the worker's default limits,
// and with tight ones (few messages, short content, a krul_mode check) so
// the limit paths are reached.
// Properties: nothing throws or crashes; a refused body yields a 400 with a
// message that serializes as the server sends it; an accepted request
// satisfies every documented bound.
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "fuzz_util.h"
#include "worker/api/openai_api.h"

namespace {

using krul::worker::ApiError;
using krul::worker::ChatRequest;
using krul::worker::RequestLimits;
using krul::worker::Role;

void Parse(std::string_view body, const RequestLimits& limits) {
  ApiError error;
  std::optional<ChatRequest> request = krul::worker::ParseChatRequest(body, limits, &error);
  if (!request.has_value()) {
    FUZZ_CHECK(error.http_status == 400);
    FUZZ_CHECK(!error.message.empty());
    // As the server sends it (http_api.cc SendJson): invalid UTF-8 replaced.
    (void)error.ToJson().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    return;
  }
  FUZZ_CHECK(!request->messages.empty());
  FUZZ_CHECK(request->messages.size() <= static_cast<size_t>(limits.max_messages));
  FUZZ_CHECK(request->messages.back().role != Role::kAssistant);
  for (const auto& m : request->messages) {
    FUZZ_CHECK(m.content.size() <= limits.max_content_bytes);
  }
  FUZZ_CHECK(request->max_tokens >= 1 && request->max_tokens <= limits.max_tokens_limit);
  FUZZ_CHECK(request->temperature >= 0.0f && request->temperature <= 2.0f);
  FUZZ_CHECK(request->top_p > 0.0f && request->top_p <= 1.0f);
  if (request->mode.has_value() && limits.check_mode) {
    FUZZ_CHECK(*request->mode == "recompute" || *request->mode == "load");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body = krul::fuzz::AsView(data, size);
  Parse(body, RequestLimits());

  RequestLimits tight;
  tight.default_max_tokens = 8;
  tight.max_tokens_limit = 16;
  tight.max_messages = 4;
  tight.max_content_bytes = 64;
  tight.check_mode = [](std::string_view name) -> absl::StatusOr<std::string> {
    if (name == "recompute" || name == "RECOMPUTE") return std::string("recompute");
    if (name == "load") return std::string("load");
    return absl::InvalidArgumentError("unknown krul_mode");
  };
  Parse(body, tight);
  return 0;
}
