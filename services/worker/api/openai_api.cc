#include "worker/api/openai_api.h"

#include <cmath>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "worker/api/string_view_conversion.h"

namespace krul::worker {
namespace {

using nlohmann::json;

ApiError BadRequest(std::string param, std::string message) {
  ApiError e;
  e.http_status = 400;
  e.param = std::move(param);
  e.message = std::move(message);
  return e;
}

const char* JsonTypeName(const json& v) { return v.type_name(); }

// Reads an optional number field into *out. False (with *error set) when the
// field is present and not a number (null counts as absent, as in OpenAI).
bool ReadNumber(const json& body, const char* field, double* out, bool* present, ApiError* error) {
  *present = false;
  auto it = body.find(field);
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_number()) {
    *error =
        BadRequest(field, absl::StrCat("'", field, "' must be a number, got ", JsonTypeName(*it)));
    return false;
  }
  *out = it->get<double>();
  *present = true;
  return true;
}

bool ReadInteger(const json& body, const char* field, int64_t* out, bool* present,
                 ApiError* error) {
  *present = false;
  auto it = body.find(field);
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_number_integer() && !it->is_number_unsigned()) {
    *error = BadRequest(field,
                        absl::StrCat("'", field, "' must be an integer, got ", JsonTypeName(*it)));
    return false;
  }
  if (it->is_number_unsigned() &&
      it->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    *out = std::numeric_limits<int64_t>::max();
  } else {
    *out = it->get<int64_t>();
  }
  *present = true;
  return true;
}

bool ReadBool(const json& body, const char* field, bool* out, ApiError* error) {
  auto it = body.find(field);
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_boolean()) {
    *error =
        BadRequest(field, absl::StrCat("'", field, "' must be a boolean, got ", JsonTypeName(*it)));
    return false;
  }
  *out = it->get<bool>();
  return true;
}

bool ReadString(const json& body, const char* field, std::string* out, ApiError* error) {
  auto it = body.find(field);
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_string()) {
    *error =
        BadRequest(field, absl::StrCat("'", field, "' must be a string, got ", JsonTypeName(*it)));
    return false;
  }
  *out = it->get<std::string>();
  return true;
}

// Present, not null and not an empty array/object: the client asked for it.
bool IsSet(const json& body, const char* field) {
  auto it = body.find(field);
  if (it == body.end() || it->is_null()) return false;
  if ((it->is_array() || it->is_object()) && it->empty()) return false;
  if (it->is_boolean() && !it->get<bool>()) return false;
  return true;
}

bool ParseMessage(const json& m, size_t index, const RequestLimits& limits, ChatMessage* out,
                  ApiError* error) {
  const std::string param = absl::StrCat("messages[", index, "]");
  if (!m.is_object()) {
    *error = BadRequest(param, absl::StrCat(param, " must be an object, got ", JsonTypeName(m)));
    return false;
  }
  auto role_it = m.find("role");
  if (role_it == m.end() || !role_it->is_string()) {
    *error = BadRequest(param + ".role", absl::StrCat(param, ".role is missing or not a string"));
    return false;
  }
  const std::string role = role_it->get<std::string>();
  if (role == "system" || role == "developer") {
    out->role = Role::kSystem;
  } else if (role == "user") {
    out->role = Role::kUser;
  } else if (role == "assistant") {
    out->role = Role::kAssistant;
  } else {
    *error = BadRequest(param + ".role",
                        absl::StrCat(param, ".role '", role,
                                     "' is not supported; expected system, developer, user or "
                                     "assistant"));
    return false;
  }
  if (IsSet(m, "tool_calls") || IsSet(m, "function_call")) {
    *error = BadRequest(param + ".tool_calls", "tool calls are not supported");
    return false;
  }
  auto content_it = m.find("content");
  if (content_it == m.end() || content_it->is_null()) {
    *error = BadRequest(param + ".content", absl::StrCat(param, ".content is missing"));
    return false;
  }
  out->content.clear();
  if (content_it->is_string()) {
    out->content = content_it->get<std::string>();
  } else if (content_it->is_array()) {
    for (size_t p = 0; p < content_it->size(); ++p) {
      const json& part = (*content_it)[p];
      const std::string part_param = absl::StrCat(param, ".content[", p, "]");
      if (!part.is_object() || !part.contains("type") || !part["type"].is_string()) {
        *error = BadRequest(part_param, absl::StrCat(part_param, " must be an object with a type"));
        return false;
      }
      if (part["type"].get<std::string>() != "text") {
        *error = BadRequest(part_param, absl::StrCat(part_param, ": content type '",
                                                     part["type"].get<std::string>(),
                                                     "' is not supported; only text"));
        return false;
      }
      if (!part.contains("text") || !part["text"].is_string()) {
        *error =
            BadRequest(part_param + ".text", absl::StrCat(part_param, ".text must be a string"));
        return false;
      }
      out->content += part["text"].get<std::string>();
    }
  } else {
    *error =
        BadRequest(param + ".content", absl::StrCat(param,
                                                    ".content must be a string or an array of text "
                                                    "parts, got ",
                                                    JsonTypeName(*content_it)));
    return false;
  }
  if (out->content.size() > limits.max_content_bytes) {
    *error = BadRequest(param + ".content",
                        absl::StrCat(param, ".content has ", out->content.size(),
                                     " bytes; the limit is ", limits.max_content_bytes));
    return false;
  }
  return true;
}

// The prefix of the session's message for a prompt beyond the context, and
// the error code OpenAI gives it.
constexpr char kContextLengthExceeded[] = "context_length_exceeded";

}  // namespace

json ApiError::ToJson() const {
  json e = {{"message", message}, {"type", type}};
  e["param"] = param.empty() ? json(nullptr) : json(param);
  e["code"] = code.empty() ? json(nullptr) : json(code);
  return json{{"error", e}};
}

ApiError ApiErrorFromStatus(const absl::Status& status) {
  ApiError e;
  e.message = std::string(status.message());
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      e.http_status = 400;
      e.type = "invalid_request_error";
      // OpenAI's code for a prompt (+ max_tokens) beyond the context; the
      // session says so at the start of its message.
      if (absl::StartsWith(status.message(), kContextLengthExceeded)) {
        e.code = kContextLengthExceeded;
        e.param = "messages";
      }
      break;
    case absl::StatusCode::kNotFound:
      e.http_status = 404;
      e.type = "invalid_request_error";
      e.code = "model_not_found";
      break;
    case absl::StatusCode::kResourceExhausted:
      e.http_status = 429;
      e.type = "rate_limit_error";
      e.code = "queue_full";
      break;
    case absl::StatusCode::kUnavailable:
      e.http_status = 503;
      e.type = "server_error";
      break;
    case absl::StatusCode::kDeadlineExceeded:
      e.http_status = 504;
      e.type = "server_error";
      break;
    default:
      e.http_status = 500;
      e.type = "server_error";
  }
  return e;
}

std::optional<ChatRequest> ParseChatRequest(std::string_view body, const RequestLimits& limits,
                                            ApiError* error) {
  json root = json::parse(body.begin(), body.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    *error = BadRequest("", "the request body is not valid JSON");
    return std::nullopt;
  }
  if (!root.is_object()) {
    *error = BadRequest(
        "", absl::StrCat("the request body must be a JSON object, got ", JsonTypeName(root)));
    return std::nullopt;
  }
  ChatRequest req;
  req.max_tokens = limits.default_max_tokens;
  if (!ReadString(root, "model", &req.model, error)) return std::nullopt;

  // messages
  auto messages_it = root.find("messages");
  if (messages_it == root.end() || messages_it->is_null()) {
    *error = BadRequest("messages", "'messages' is required");
    return std::nullopt;
  }
  if (!messages_it->is_array()) {
    *error = BadRequest(
        "messages", absl::StrCat("'messages' must be an array, got ", JsonTypeName(*messages_it)));
    return std::nullopt;
  }
  if (messages_it->empty()) {
    *error = BadRequest("messages", "'messages' is empty: send at least one message");
    return std::nullopt;
  }
  if (messages_it->size() > static_cast<size_t>(limits.max_messages)) {
    *error = BadRequest("messages", absl::StrCat("'messages' has ", messages_it->size(),
                                                 " entries; the limit is ", limits.max_messages));
    return std::nullopt;
  }
  for (size_t i = 0; i < messages_it->size(); ++i) {
    ChatMessage m;
    if (!ParseMessage((*messages_it)[i], i, limits, &m, error)) return std::nullopt;
    req.messages.push_back(std::move(m));
  }
  if (req.messages.back().role == Role::kAssistant) {
    *error = BadRequest(absl::StrCat("messages[", req.messages.size() - 1, "].role"),
                        "the last message must be from the user or system, not the assistant");
    return std::nullopt;
  }

  // max_tokens (max_completion_tokens is the newer name; either may be sent).
  for (const char* field : {"max_completion_tokens", "max_tokens"}) {
    int64_t v = 0;
    bool present = false;
    if (!ReadInteger(root, field, &v, &present, error)) return std::nullopt;
    if (!present) continue;
    if (v < 1 || v > limits.max_tokens_limit) {
      *error = BadRequest(field, absl::StrCat("'", field, "' is ", v, "; it must be in [1, ",
                                              limits.max_tokens_limit, "]"));
      return std::nullopt;
    }
    req.max_tokens = static_cast<int>(v);
    break;
  }

  double number = 0;
  bool present = false;
  if (!ReadNumber(root, "temperature", &number, &present, error)) return std::nullopt;
  if (present) {
    if (!(number >= 0.0 && number <= 2.0)) {
      *error = BadRequest("temperature",
                          absl::StrCat("'temperature' is ", number, "; it must be in [0, 2]"));
      return std::nullopt;
    }
    req.temperature = static_cast<float>(number);
  }
  if (!ReadNumber(root, "top_p", &number, &present, error)) return std::nullopt;
  if (present) {
    if (!(number > 0.0 && number <= 1.0)) {
      *error = BadRequest("top_p", absl::StrCat("'top_p' is ", number, "; it must be in (0, 1]"));
      return std::nullopt;
    }
    req.top_p = static_cast<float>(number);
  }
  int64_t integer = 0;
  if (!ReadInteger(root, "seed", &integer, &present, error)) return std::nullopt;
  if (present) req.seed = static_cast<uint64_t>(integer);
  if (!ReadInteger(root, "n", &integer, &present, error)) return std::nullopt;
  if (present && integer != 1) {
    *error = BadRequest("n", absl::StrCat("'n' is ", integer, "; only n = 1 is supported"));
    return std::nullopt;
  }
  if (!ReadBool(root, "stream", &req.stream, error)) return std::nullopt;
  if (auto it = root.find("stream_options"); it != root.end() && !it->is_null()) {
    if (!it->is_object()) {
      *error = BadRequest("stream_options", "'stream_options' must be an object");
      return std::nullopt;
    }
    if (!req.stream) {
      *error = BadRequest("stream_options", "'stream_options' is only allowed with stream: true");
      return std::nullopt;
    }
    if (!ReadBool(*it, "include_usage", &req.include_usage, error)) {
      error->param = "stream_options.include_usage";
      return std::nullopt;
    }
  }

  // Features that would change the answer and are not implemented.
  for (const char* field : {"tools", "functions", "stop", "logprobs", "top_logprobs", "logit_bias",
                            "audio", "prediction"}) {
    if (IsSet(root, field)) {
      *error = BadRequest(field, absl::StrCat("'", field, "' is not supported by this worker"));
      return std::nullopt;
    }
  }
  if (auto it = root.find("response_format"); it != root.end() && !it->is_null()) {
    if (!it->is_object() || !it->contains("type") || !(*it)["type"].is_string() ||
        (*it)["type"].get<std::string>() != "text") {
      *error =
          BadRequest("response_format", "only response_format {\"type\": \"text\"} is supported");
      return std::nullopt;
    }
  }

  // Conversation identity and Krul extensions.
  std::string user;
  if (!ReadString(root, "conversation_id", &req.conversation_id, error)) return std::nullopt;
  if (!ReadString(root, "user", &user, error)) return std::nullopt;
  if (req.conversation_id.empty()) req.conversation_id = user;
  if (req.conversation_id.size() > 256) {
    *error = BadRequest("conversation_id", "'conversation_id' (or 'user') exceeds 256 bytes");
    return std::nullopt;
  }
  std::string mode;
  if (!ReadString(root, "krul_mode", &mode, error)) return std::nullopt;
  if (!mode.empty()) {
    if (limits.check_mode) {
      absl::StatusOr<std::string> canonical = limits.check_mode(mode);
      if (!canonical.ok()) {
        *error = BadRequest("krul_mode", std::string(canonical.status().message()));
        return std::nullopt;
      }
      mode = *std::move(canonical);
    }
    req.mode = std::move(mode);
  }
  if (!ReadBool(root, "return_token_ids", &req.return_token_ids, error)) return std::nullopt;
  return req;
}

json MakeUsageJson(const CompletionStats& s) {
  return json{
      {"prompt_tokens", s.prompt_tokens},
      {"completion_tokens", s.completion_tokens},
      {"total_tokens", s.prompt_tokens + s.completion_tokens},
      {"prompt_tokens_details", {{"cached_tokens", s.restored_tokens}}},
      {"ttft_ms", s.ttft_ms},
      {"restore_mode", s.mode},
      {"restored_tokens", s.restored_tokens},
      {"recomputed_tokens", s.recomputed_tokens},
      {"loaded_tokens", s.loaded_tokens},
  };
}

json MakeKrulJson(const CompletionStats& s) {
  json k = {
      {"mode", s.mode},
      {"restore", s.restore},
      {"restored_tokens", s.restored_tokens},
      {"recomputed_tokens", s.recomputed_tokens},
      {"loaded_tokens", s.loaded_tokens},
      {"loaded_bytes", s.loaded_bytes},
      {"prefilled_tokens", s.prefilled_tokens},
      {"ttft_ms", s.ttft_ms},
      {"queue_ms", s.queue_ms},
      {"restore_ms", s.restore_ms},
      {"conversation_id", s.conversation_id},
      {"worker_id", s.worker_id},
  };
  k["fallback_reason"] = s.fallback_reason.empty() ? json(nullptr) : json(s.fallback_reason);
  if (!s.link.empty()) k["link"] = s.link;
  if (s.restore == "hit") {
    const RestoreProfile& p = s.profile;
    k["restore_profile"] = {
        {"lookup_ms", p.lookup_ms},
        {"pin_ms", p.pin_ms},
        {"plan_ms", p.plan_ms},
        {"first_block_ms", p.first_block_ms},
        {"blocks_ms", p.blocks_ms},
        {"load_wait_ms", p.load_wait_ms},
        {"decode_ms", p.decode_ms},
        {"load_ms", p.load_ms},
        {"load_latency_ms", p.load_latency_ms},
        {"recompute_ms", p.recompute_ms},
        {"prefill_ms", p.prefill_ms},
        {"total_ms", p.total_ms},
        {"predicted_ms", p.predicted_ms},
        {"bound_ms", p.bound_ms},
        {"efficiency", p.efficiency},
    };
  }
  return k;
}

json MakeCompletionJson(const std::string& id, int64_t created, const std::string& model,
                        const std::string& content, const std::string& finish_reason,
                        const CompletionStats& stats, const std::vector<int>* token_ids) {
  json choice = {
      {"index", 0},
      {"message", {{"role", "assistant"}, {"content", content}, {"refusal", nullptr}}},
      {"logprobs", nullptr},
      {"finish_reason", finish_reason},
  };
  json out = {
      {"id", id},
      {"object", "chat.completion"},
      {"created", created},
      {"model", model},
      {"system_fingerprint", "krul-v1"},
      {"choices", json::array({choice})},
      {"usage", MakeUsageJson(stats)},
      {"krul", MakeKrulJson(stats)},
  };
  if (token_ids != nullptr) out["krul"]["completion_token_ids"] = *token_ids;
  return out;
}

json MakeChunkJson(const std::string& id, int64_t created, const std::string& model,
                   const std::optional<std::string>& role,
                   const std::optional<std::string>& content,
                   const std::optional<std::string>& finish_reason) {
  json delta = json::object();
  if (role) delta["role"] = *role;
  if (content) delta["content"] = *content;
  json choice = {{"index", 0}, {"delta", delta}, {"logprobs", nullptr}};
  choice["finish_reason"] = finish_reason ? json(*finish_reason) : json(nullptr);
  return json{
      {"id", id},       {"object", "chat.completion.chunk"}, {"created", created},
      {"model", model}, {"system_fingerprint", "krul-v1"},   {"choices", json::array({choice})}};
}

std::string SseEvent(const json& data) {
  return absl::StrCat("data: ", data.dump(-1, ' ', false, json::error_handler_t::replace), "\n\n");
}

std::string SseDone() { return "data: [DONE]\n\n"; }

std::vector<std::string> ParseSseData(std::string_view stream) {
  std::vector<std::string> out;
  std::string current;
  bool have_data = false;
  size_t pos = 0;
  while (pos <= stream.size()) {
    size_t end = stream.find('\n', pos);
    if (end == std::string_view::npos) end = stream.size();
    std::string_view line = stream.substr(pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) {
      // A blank line ends an event.
      if (have_data) out.push_back(current);
      current.clear();
      have_data = false;
    } else if (line.substr(0, 5) == "data:") {
      std::string_view value = line.substr(5);
      if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
      if (have_data) current += '\n';
      current.append(value);
      have_data = true;
    }
    if (end == stream.size()) break;
    pos = end + 1;
  }
  if (have_data) out.push_back(current);
  return out;
}

namespace {

// Length of the UTF-8 sequence started by `lead`, or 0 if it cannot start one.
int SequenceLength(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

// Whether `c` may follow the bytes before it at position `i` (1-based) of a
// sequence led by `lead` (excludes overlong forms and surrogates).
bool ValidContinuation(unsigned char lead, int i, unsigned char c) {
  if ((c & 0xC0) != 0x80) return false;
  if (i != 1) return true;
  if (lead == 0xE0) return c >= 0xA0;
  if (lead == 0xED) return c <= 0x9F;
  if (lead == 0xF0) return c >= 0x90;
  if (lead == 0xF4) return c <= 0x8F;
  return true;
}

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";

}  // namespace

std::string Utf8Stream::Append(std::string_view bytes) {
  pending_.append(bytes);
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    const unsigned char lead = static_cast<unsigned char>(pending_[i]);
    const int len = SequenceLength(lead);
    if (len == 0) {
      out.append(kReplacement);
      ++i;
      continue;
    }
    int have = 1;
    bool bad = false;
    while (have < len && i + have < pending_.size()) {
      if (!ValidContinuation(lead, have, static_cast<unsigned char>(pending_[i + have]))) {
        bad = true;
        break;
      }
      ++have;
    }
    if (bad) {
      // The lead and the valid continuations so far form no character.
      out.append(kReplacement);
      i += have;
      continue;
    }
    if (have < len) break;  // incomplete: wait for more bytes
    out.append(pending_, i, len);
    i += len;
  }
  pending_.erase(0, i);
  return out;
}

std::string Utf8Stream::Finish() {
  std::string out;
  if (!pending_.empty()) out.append(kReplacement);
  pending_.clear();
  return out;
}

std::string SanitizeUtf8(std::string_view bytes) {
  Utf8Stream stream;
  std::string out = stream.Append(bytes);
  out += stream.Finish();
  return out;
}

}  // namespace krul::worker
