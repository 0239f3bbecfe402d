#include "client/chat_stream.h"

#include <httplib.h>

#include <chrono>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "worker/api/openai_api.h"

namespace krul::loadtest {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

double MsSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// The error message of an OpenAI error body, else the body itself.
std::string ErrorMessage(const std::string& body) {
  json j = json::parse(body, nullptr, false);
  if (!j.is_discarded() && j.is_object() && j.contains("error") && j["error"].is_object()) {
    return StringField(j["error"], "message", body);
  }
  return body.substr(0, 500);
}

// Reads the SSE events of a stream as its bytes arrive.
class EventReader {
 public:
  EventReader(Clock::time_point start, ChatResult* result) : start_(start), result_(result) {}

  void Feed(const char* data, size_t n) {
    buffer_.append(data, n);
    size_t end;
    while ((end = buffer_.find("\n\n")) != std::string::npos) {
      const std::string event = buffer_.substr(0, end + 2);
      buffer_.erase(0, end + 2);
      for (const std::string& payload : worker::ParseSseData(event)) OnData(payload);
    }
  }

  bool done() const { return done_; }
  double first_text_ms() const { return first_text_ms_; }
  double last_text_ms() const { return last_text_ms_; }
  const std::string& stream_error() const { return stream_error_; }

 private:
  void OnData(const std::string& payload) {
    if (payload == "[DONE]") {
      done_ = true;
      return;
    }
    json chunk = json::parse(payload, nullptr, false);
    if (chunk.is_discarded() || !chunk.is_object()) {
      stream_error_ = "unparsable SSE chunk: " + payload.substr(0, 200);
      return;
    }
    if (chunk.contains("error")) {
      stream_error_ = chunk["error"].is_object() ? StringField(chunk["error"], "message", "error")
                                                 : chunk["error"].dump();
      return;
    }
    if (auto usage = chunk.find("usage"); usage != chunk.end() && usage->is_object()) {
      result_->prompt_tokens = static_cast<int>(NumberField(*usage, "prompt_tokens"));
      result_->completion_tokens = static_cast<int>(NumberField(*usage, "completion_tokens"));
    }
    if (auto krul = chunk.find("krul"); krul != chunk.end() && krul->is_object()) {
      result_->krul = *krul;
    }
    auto choices = chunk.find("choices");
    if (choices == chunk.end() || !choices->is_array() || choices->empty()) return;
    const json& choice = (*choices)[0];
    if (auto delta = choice.find("delta"); delta != choice.end() && delta->is_object()) {
      auto content = delta->find("content");
      if (content != delta->end() && content->is_string() &&
          !content->get_ref<const std::string&>().empty()) {
        const double now = MsSince(start_);
        if (first_text_ms_ < 0) first_text_ms_ = now;
        last_text_ms_ = now;
        result_->content += content->get<std::string>();
      }
    }
    if (auto finish = choice.find("finish_reason"); finish != choice.end() && finish->is_string()) {
      result_->finish_reason = finish->get<std::string>();
      finish_ms_ = MsSince(start_);
      if (first_text_ms_ < 0) first_text_ms_ = finish_ms_;  // an answer without text
    }
  }

  Clock::time_point start_;
  ChatResult* result_;
  std::string buffer_;
  bool done_ = false;
  double first_text_ms_ = -1;
  double last_text_ms_ = -1;
  double finish_ms_ = -1;
  std::string stream_error_;
};

}  // namespace

double NumberField(const json& object, const char* field, double fallback) {
  if (!object.is_object()) return fallback;
  auto it = object.find(field);
  return it != object.end() && it->is_number() ? it->get<double>() : fallback;
}

std::string StringField(const json& object, const char* field, const std::string& fallback) {
  if (!object.is_object()) return fallback;
  auto it = object.find(field);
  return it != object.end() && it->is_string() ? it->get<std::string>() : fallback;
}

StreamingChat::StreamingChat(const Endpoint& endpoint, absl::Duration connect_timeout,
                             absl::Duration request_timeout, bool keep_alive,
                             const std::string& api_key)
    : request_timeout_(request_timeout),
      api_key_(api_key),
      client_(std::make_unique<httplib::Client>(endpoint.host, endpoint.port)) {
  const int64_t connect_us = absl::ToInt64Microseconds(connect_timeout);
  const int64_t read_us = absl::ToInt64Microseconds(request_timeout);
  client_->set_connection_timeout(connect_us / 1000000, connect_us % 1000000);
  client_->set_read_timeout(read_us / 1000000, read_us % 1000000);
  client_->set_write_timeout(read_us / 1000000, read_us % 1000000);
  client_->set_keep_alive(keep_alive);
  client_->set_tcp_nodelay(true);
  if (!api_key_.empty()) client_->set_bearer_token_auth(api_key_);
}

StreamingChat::~StreamingChat() = default;

void StreamingChat::Interrupt() { client_->stop(); }

std::string StreamingChat::Scrubbed(const std::string& message) const {
  // A server that echoes the key must not put it into reports or logs.
  if (api_key_.empty()) return message;
  return absl::StrReplaceAll(message, {{api_key_, "<api key>"}});
}

ChatResult StreamingChat::Send(json request, const std::atomic<bool>& cancel) {
  ChatResult result;
  request["stream"] = true;
  request["stream_options"] = {{"include_usage", true}};
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/chat/completions";
  req.body = request.dump(-1, ' ', false, json::error_handler_t::replace);
  req.set_header("Content-Type", "application/json");
  req.set_header("Accept", "text/event-stream");
  const auto start = Clock::now();
  const double timeout_ms = absl::ToDoubleMilliseconds(request_timeout_);
  EventReader reader(start, &result);
  std::string raw;  // the body of a non-200 answer
  bool timed_out = false;
  bool cancelled = false;
  int status = 0;
  req.response_handler = [&](const httplib::Response& response) {
    status = response.status;
    return true;
  };
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    if (cancel.load(std::memory_order_relaxed)) {
      cancelled = true;
      return false;
    }
    if (MsSince(start) > timeout_ms) {
      timed_out = true;
      return false;
    }
    if (status == 200) {
      reader.Feed(data, n);
    } else if (raw.size() < 65536) {
      raw.append(data, n);
    }
    return true;
  };
  auto res = client_->send(req);
  result.e2e_ms = MsSince(start);
  if (!res) {
    const httplib::Error error = res.error();
    result.http_status = status;
    result.error = httplib::to_string(error);
    if (cancelled || cancel.load()) {
      result.error_kind = "cancelled";
    } else if (timed_out || result.e2e_ms >= timeout_ms * 0.99) {
      result.error_kind = "timeout";
    } else if (status == 0 &&
               (error == httplib::Error::Connection || error == httplib::Error::ConnectionTimeout ||
                error == httplib::Error::BindIPAddress)) {
      result.error_kind = "connection";
    } else if (status == 0) {
      result.error_kind = "connection";  // reset before any answer
    } else {
      result.error_kind = "stream";
    }
    // A connection in an unknown state is not reused.
    client_->stop();
    return result;
  }
  result.http_status = res->status;
  if (res->status != 200) {
    result.error = Scrubbed(ErrorMessage(raw.empty() ? res->body : raw));
    if (res->status == 401) {
      result.error_kind = "unauthorized";
      result.error =
          absl::StrCat(api_key_.empty() ? "no API key was sent" : "the API key was refused",
                       " (HTTP 401): ", result.error);
    } else if (res->status == 400 && absl::StrContains(result.error, "context_length")) {
      result.error_kind = "context_length";
    } else {
      result.error_kind = absl::StrCat("http_", res->status);
    }
    return result;
  }
  if (!reader.stream_error().empty()) {
    result.error_kind = "stream";
    result.error = Scrubbed(reader.stream_error());
    return result;
  }
  if (!reader.done()) {
    result.error_kind = "stream";
    result.error = "the stream ended without data: [DONE]";
    return result;
  }
  result.ttft_ms = reader.first_text_ms();
  if (result.completion_tokens >= 2 && reader.last_text_ms() > reader.first_text_ms()) {
    result.tpot_ms =
        (reader.last_text_ms() - reader.first_text_ms()) / (result.completion_tokens - 1);
  }
  return result;
}

}  // namespace krul::loadtest
