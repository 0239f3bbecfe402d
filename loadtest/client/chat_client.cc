#include "client/chat_client.h"

#include <httplib.h>

#include <chrono>
#include <sstream>

#include "absl/strings/str_replace.h"
#include "worker/api/openai_api.h"

namespace krul::worker {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

double MsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

void FillError(ChatReply& reply, const std::string& body) {
  json j = json::parse(body, nullptr, false);
  if (!j.is_discarded() && j.contains("error") && j["error"].contains("message")) {
    reply.error = j["error"]["message"].get<std::string>();
    reply.body = j;
  } else {
    reply.error = body;
  }
}

}  // namespace

ChatClient::ChatClient(const std::string& host, int port, const std::string& api_key)
    : api_key_(api_key), client_(std::make_unique<httplib::Client>(host, port)) {
  client_->set_read_timeout(120, 0);
  client_->set_connection_timeout(5, 0);
  client_->set_keep_alive(true);
  client_->set_tcp_nodelay(true);
  if (!api_key_.empty()) client_->set_bearer_token_auth(api_key_);
}

ChatClient::~ChatClient() = default;

void ChatClient::ScrubError(ChatReply& reply) const {
  if (api_key_.empty() || reply.error.empty()) return;
  reply.error = absl::StrReplaceAll(reply.error, {{api_key_, "<api key>"}});
}

ChatReply ChatClient::Chat(const json& request, const Headers& headers) {
  const bool stream = request.value("stream", false);
  if (!stream) return PostRaw(request.dump(), headers);
  ChatReply reply;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/chat/completions";
  req.body = request.dump();
  req.set_header("Content-Type", "application/json");
  req.set_header("Accept", "text/event-stream");
  for (const auto& [k, v] : headers) {
    if (k != "Content-Type" && k != "Accept") req.set_header(k, v);
  }
  std::string raw;
  bool first = true;
  const auto start = Clock::now();
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    if (first) {
      reply.ttft_ms = MsBetween(start, Clock::now());
      first = false;
    }
    raw.append(data, n);
    return true;
  };
  auto res = client_->send(req);
  reply.total_ms = MsBetween(start, Clock::now());
  if (!res) {
    reply.error = httplib::to_string(res.error());
    return reply;
  }
  reply.http_status = res->status;
  reply.retry_after = res->get_header_value("Retry-After");
  if (res->status != 200) {
    FillError(reply, raw.empty() ? res->body : raw);
    ScrubError(reply);
    return reply;
  }
  json usage;
  for (const std::string& data : ParseSseData(raw)) {
    if (data == "[DONE]") {
      reply.done_marker = true;
      continue;
    }
    json chunk = json::parse(data, nullptr, false);
    if (chunk.is_discarded()) {
      reply.error = "unparsable SSE chunk: " + data;
      continue;
    }
    if (chunk.contains("error")) {
      reply.error = chunk["error"].value("message", "error");
      ScrubError(reply);
      continue;
    }
    reply.chunks.push_back(chunk);
    if (chunk.contains("usage") && !chunk["usage"].is_null()) usage = chunk["usage"];
    if (!chunk.contains("choices") || chunk["choices"].empty()) continue;
    const json& choice = chunk["choices"][0];
    if (choice.contains("delta") && choice["delta"].contains("content") &&
        choice["delta"]["content"].is_string()) {
      reply.content += choice["delta"]["content"].get<std::string>();
    }
    if (choice.contains("finish_reason") && choice["finish_reason"].is_string()) {
      reply.finish_reason = choice["finish_reason"].get<std::string>();
      reply.body = chunk;
    }
  }
  if (!usage.is_null()) reply.body["usage"] = usage;
  return reply;
}

ChatReply ChatClient::PostRaw(const std::string& body, const Headers& headers) {
  ChatReply reply;
  httplib::Headers extra;
  for (const auto& [k, v] : headers) {
    if (k != "Content-Type") extra.emplace(k, v);
  }
  const auto start = Clock::now();
  auto res = client_->Post("/v1/chat/completions", extra, body, "application/json");
  reply.total_ms = MsBetween(start, Clock::now());
  reply.ttft_ms = reply.total_ms;
  if (!res) {
    reply.error = httplib::to_string(res.error());
    return reply;
  }
  reply.http_status = res->status;
  reply.retry_after = res->get_header_value("Retry-After");
  if (res->status != 200) {
    FillError(reply, res->body);
    ScrubError(reply);
    return reply;
  }
  reply.body = json::parse(res->body, nullptr, false);
  if (reply.body.is_discarded()) {
    reply.error = "unparsable response: " + res->body;
    return reply;
  }
  if (reply.body.contains("choices") && !reply.body["choices"].empty()) {
    const json& choice = reply.body["choices"][0];
    reply.content = choice["message"].value("content", "");
    reply.finish_reason = choice.value("finish_reason", "");
  }
  return reply;
}

std::pair<int, std::string> ChatClient::Get(const std::string& path) {
  auto res = client_->Get(path.c_str());
  if (!res) return {0, httplib::to_string(res.error())};
  return {res->status, res->body};
}

double MetricValue(const std::string& exposition, const std::string& name,
                   const std::string& labels) {
  const std::string key = labels.empty() ? name : name + "{" + labels + "}";
  std::istringstream in(exposition);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (line.compare(0, key.size(), key) == 0 && line.size() > key.size() &&
        line[key.size()] == ' ') {
      return std::stod(line.substr(key.size() + 1));
    }
  }
  return 0;
}

}  // namespace krul::worker
