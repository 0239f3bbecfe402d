#include "worker/server/http_api.h"

#include <httplib.h>

#include <atomic>
#include <cstdio>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "krul/base/log.h"
#include "worker/api/openai_api.h"
#include "worker/server/bounded_http_server.h"
#include "worker/session/session.h"

namespace krul::worker {
namespace {

using nlohmann::json;

void SendJson(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void SendError(WorkerCore* core, httplib::Response& res, const ApiError& error,
               int retry_after_seconds = 0) {
  if (retry_after_seconds > 0) res.set_header("Retry-After", std::to_string(retry_after_seconds));
  SendJson(res, error.http_status, error.ToJson());
  core->metrics().CountRequest(error.http_status);
}

std::string NewCompletionId() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  return absl::StrFormat("chatcmpl-%016x%08x", rng(), static_cast<uint32_t>(rng()));
}

int64_t UnixSeconds() { return absl::ToUnixSeconds(absl::Now()); }

// The paths served and the methods each takes; another method is 405.
struct Route {
  const char* path;
  const char* allow;  // the Allow header
};
constexpr Route kRoutes[] = {
    {"/v1/chat/completions", "POST"}, {"/v1/models", "GET, HEAD"}, {"/healthz", "GET, HEAD"},
    {"/readyz", "GET, HEAD"},         {"/metrics", "GET, HEAD"},
};

bool Allows(const Route& route, const std::string& method) {
  if (std::string_view(route.allow) == "POST") return method == "POST";
  return method == "GET" || method == "HEAD";
}

// The methods whose body httplib reads before routing (all of it, into
// memory; a chunked one without any limit).
bool HasBody(const httplib::Request& req) {
  return req.method == "POST" || req.method == "PUT" || req.method == "PATCH" ||
         req.method == "DELETE" || req.method == "PRI";
}

std::string TooLargeMessage(size_t limit) {
  return absl::StrCat("the request body exceeds --max_request_bytes (", limit, " bytes)");
}

// Runs before httplib reads a body: a request whose path or method takes
// no body is answered (404 / 405 with Allow) without reading it, and its
// connection closed; an allowed one starts its body deadline.
httplib::Server::HandlerResponse RouteGuard(WorkerCore* core, const httplib::Request& req,
                                            httplib::Response& res) {
  const bool has_body = HasBody(req);
  const Route* route = nullptr;
  for (const Route& r : kRoutes) {
    if (req.path == r.path) route = &r;
  }
  if (route != nullptr ? Allows(*route, req.method) : !has_body) {
    if (has_body) {
      BoundedHttpServer::BodyPhase();
    } else {
      BoundedHttpServer::HandlerPhase();  // an unknown path: httplib's 404
    }
    return httplib::Server::HandlerResponse::Unhandled;
  }
  BoundedHttpServer::HandlerPhase();
  if (has_body) BoundedHttpServer::CloseAfterResponse(res);
  ApiError e;
  if (route == nullptr) {
    e.http_status = 404;
    e.message = absl::StrCat("no route for ", req.method, " ", req.path);
  } else {
    e.http_status = 405;
    e.message = absl::StrCat(req.method, " is not allowed on ", req.path, "; use ", route->allow);
    res.set_header("Allow", route->allow);
  }
  SendJson(res, e.http_status, e.ToJson());
  if (req.path == "/v1/chat/completions") core->metrics().CountRequest(e.http_status);
  return httplib::Server::HandlerResponse::Handled;
}

// Reads a chat request's body into *body within --max_request_bytes,
// whatever its transfer encoding (httplib 0.11 checks its payload limit
// only against a Content-Length), and within --http_body_timeout. On
// failure answers 413, 408, 415 or 400, closes the connection after the
// answer (the body was not read to its end) and returns false.
bool ReadBody(WorkerCore* core, const httplib::Request& req, httplib::Response& res,
              const httplib::ContentReader& content_reader, std::string* body) {
  const size_t limit = core->options().max_request_bytes;
  const std::string length = req.get_header_value("Content-Length");
  uint64_t declared = 0;
  ApiError e;
  if (req.is_multipart_form_data()) {
    e.http_status = 415;
    e.message = "multipart bodies are not accepted: send the request as application/json";
  } else if (absl::SimpleAtoi(length, &declared) && declared > limit) {
    e.http_status = 413;
    e.message = TooLargeMessage(limit);
  } else {
    bool too_large = false;
    const bool read = content_reader([&](const char* data, size_t n) {
      if (body->size() + n > limit) {
        too_large = true;
        return false;
      }
      body->append(data, n);
      return true;
    });
    if (read) {
      BoundedHttpServer::HandlerPhase();
      return true;
    }
    if (too_large) {
      e.http_status = 413;
      e.message = TooLargeMessage(limit);
    } else if (BoundedHttpServer::ReadTimedOut()) {
      e.http_status = 408;
      e.message = absl::StrCat("the request body did not arrive within --http_body_timeout (",
                               absl::FormatDuration(core->options().http_body_timeout), ")");
    } else {
      e.message = "the request body could not be read";
    }
  }
  BoundedHttpServer::HandlerPhase();
  BoundedHttpServer::CloseAfterResponse(res);
  SendError(core, res, e);
  return false;
}

std::unique_ptr<BoundedHttpServer> NewServer(WorkerCore* core) {
  const WorkerOptions& o = core->options();
  HttpConnectionLimits limits;
  limits.max_connections = o.http_max_connections;
  limits.header_timeout = o.http_header_timeout;
  limits.body_timeout = o.http_body_timeout;
  limits.keep_alive_timeout = o.http_keep_alive_timeout;
  limits.keep_alive_max_requests = o.http_keep_alive_max_requests;
  HttpConnectionObserver observer;
  observer.on_event = [core](std::string_view event) {
    core->metrics().CountHttpConnection(event);
  };
  observer.on_open_changed = [core](int open) { core->metrics().http_connections().Set(open); };
  return std::make_unique<BoundedHttpServer>(limits, std::move(observer));
}

// API keys (api_keys.h): the tenant of the request's key, or false after
// answering 401 (code invalid_api_key). Every /v1 handler starts with it.
// Without keys: the one tenant "".
bool Authorize(WorkerCore* core, const ApiKeys* keys, const httplib::Request& req,
               httplib::Response& res, std::string* tenant) {
  if (keys == nullptr) return true;
  absl::StatusOr<std::string> t;
  if (req.has_header("Authorization")) {
    const std::string value = req.get_header_value("Authorization");
    const absl::string_view v(value);
    t = keys->Authenticate(&v);
  } else {
    t = keys->Authenticate(nullptr);
  }
  if (t.ok()) {
    *tenant = *std::move(t);
    return true;
  }
  ApiError e;
  e.http_status = 401;
  e.message = std::string(t.status().message());
  e.code = "invalid_api_key";
  res.set_header("WWW-Authenticate", "Bearer");
  SendError(core, res, e);
  return false;
}

}  // namespace

HttpApi::HttpApi(WorkerCore* core, std::unique_ptr<ApiKeys> api_keys)
    : core_(core), api_keys_(std::move(api_keys)), server_(NewServer(core)) {
  // Connections, read deadlines and keep-alive are bounded by
  // BoundedHttpServer (--http_* flags); bodies by ReadBody and RouteGuard,
  // this limit is the last line for a Content-Length.
  server_->set_payload_max_length(core_->options().max_request_bytes);
  server_->set_tcp_nodelay(true);
  Routes();
}

HttpApi::~HttpApi() = default;

absl::StatusOr<int> HttpApi::Bind(const std::string& host, int port) {
  if (api_keys_ == nullptr) {
    auto rule = CheckHttpWithoutApiKeys(host, core_->options().allow_insecure_http);
    if (!rule.ok()) return rule.status();
    KRUL_LOG(WARNING) << "krul-worker: " << *rule;
  }
  int bound = -1;
  if (port == 0) {
    bound = server_->bind_to_any_port(host);
  } else if (server_->bind_to_port(host, port)) {
    bound = port;
  }
  if (bound <= 0) {
    return absl::UnavailableError(absl::StrCat("cannot bind HTTP to ", host, ":", port));
  }
  return bound;
}

void HttpApi::Serve() { server_->Serve(); }

void HttpApi::Stop() { server_->Stop(); }

void HttpApi::Routes() {
  WorkerCore* core = core_;
  const ApiKeys* keys = api_keys_.get();
  httplib::Server& s = *server_;

  s.Post("/v1/chat/completions", [core, keys](const httplib::Request& req, httplib::Response& res,
                                              const httplib::ContentReader& content_reader) {
    const absl::Time accepted = absl::Now();
    std::string tenant;
    if (!Authorize(core, keys, req, res, &tenant)) {
      BoundedHttpServer::CloseAfterResponse(res);  // its body was not read
      return;
    }
    std::string request_body;
    if (!ReadBody(core, req, res, content_reader, &request_body)) return;
    const WorkerOptions& o = core->options();
    RequestLimits limits;
    limits.default_max_tokens = o.default_max_tokens;
    limits.max_tokens_limit = o.max_tokens_limit;
    limits.max_messages = o.max_messages;
    limits.check_mode = CanonicalRestoreModeName;
    ApiError error;
    std::optional<ChatRequest> request = ParseChatRequest(request_body, limits, &error);
    if (!request.has_value()) return SendError(core, res, error);
    request->tenant = std::move(tenant);

    auto started = core->StartChat(*request, accepted);
    if (!started.ok()) {
      const ApiError e = ApiErrorFromStatus(started.status());
      const int retry =
          e.http_status == 429 || e.http_status == 503 ? core->admission().RetryAfterSeconds() : 0;
      return SendError(core, res, e, retry);
    }
    std::shared_ptr<Session> session(std::move(*started));
    const std::string id = NewCompletionId();
    const int64_t created = UnixSeconds();
    const std::string model = core->model_name();

    if (!request->stream) {
      while (!session->done()) {
        auto piece = session->Next();
        if (!piece.ok()) return SendError(core, res, ApiErrorFromStatus(piece.status()));
      }
      const json body = MakeCompletionJson(
          id, created, model, session->content(), session->finish_reason(), session->stats(),
          request->return_token_ids ? &session->completion_tokens() : nullptr);
      session->Commit();  // enqueues the persist; the reply goes out right after
      SendJson(res, 200, body);
      core->metrics().CountRequest(200);
      return;
    }

    core->metrics().CountRequest(200);
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    const bool include_usage = request->include_usage;
    const bool return_ids = request->return_token_ids;
    res.set_chunked_content_provider("text/event-stream", [session, id, created, model,
                                                           include_usage, return_ids](
                                                              size_t, httplib::DataSink& sink) {
      auto send = [&sink](const std::string& event) {
        return sink.write(event.data(), event.size());
      };
      if (!send(SseEvent(MakeChunkJson(id, created, model, std::string("assistant"), std::string(),
                                       std::nullopt)))) {
        return false;
      }
      while (!session->done()) {
        auto piece = session->Next();
        if (!piece.ok()) {
          // The status line is gone; report in-band and end the stream.
          send(SseEvent(ApiErrorFromStatus(piece.status()).ToJson()));
          return false;
        }
        if (!piece->empty() && !send(SseEvent(MakeChunkJson(id, created, model, std::nullopt,
                                                            *piece, std::nullopt)))) {
          return false;  // the client went away: do not persist
        }
      }
      json last =
          MakeChunkJson(id, created, model, std::nullopt, std::nullopt, session->finish_reason());
      last["krul"] = MakeKrulJson(session->stats());
      if (return_ids) last["krul"]["completion_token_ids"] = session->completion_tokens();
      if (!send(SseEvent(last))) return false;
      if (include_usage) {
        json usage = MakeChunkJson(id, created, model, std::nullopt, std::nullopt, std::nullopt);
        usage["choices"] = json::array();
        usage["usage"] = MakeUsageJson(session->stats());
        if (!send(SseEvent(usage))) return false;
      }
      if (!send(SseDone())) return false;
      session->Commit();
      sink.done();
      return true;
    });
  });

  s.Get("/v1/models", [core, keys](const httplib::Request& req, httplib::Response& res) {
    std::string tenant;
    if (!Authorize(core, keys, req, res, &tenant)) return;
    json model = {
        {"id", core->model_name()}, {"object", "model"}, {"created", 0}, {"owned_by", "krul"}};
    SendJson(res, 200, json{{"object", "list"}, {"data", json::array({model})}});
  });

  s.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    SendJson(res, 200, json{{"status", "ok"}});
  });

  s.Get("/readyz", [core](const httplib::Request&, httplib::Response& res) {
    if (core->ready()) {
      SendJson(res, 200, json{{"status", "ready"}});
    } else {
      SendJson(res, 503, json{{"status", "not ready"}});
    }
  });

  s.Get("/metrics", [core](const httplib::Request&, httplib::Response& res) {
    res.status = 200;
    res.set_content(core->metrics().Serialize(), "text/plain; version=0.0.4");
  });

  // Statuses httplib sets itself (404 unknown path, 405, 413 body too
  // large, 400 malformed HTTP) get an OpenAI-style JSON body too.
  s.set_error_handler(httplib::Server::HandlerWithResponse(
      [core](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        ApiError e;
        e.http_status = res.status;
        if (res.status == 404) {
          e.message = absl::StrCat("no route for ", req.method, " ", req.path);
        } else if (res.status == 413) {
          e.message = TooLargeMessage(core->options().max_request_bytes);
        } else {
          e.message = absl::StrCat("HTTP ", res.status);
        }
        res.set_content(e.ToJson().dump(), "application/json");
        if (req.path == "/v1/chat/completions") core->metrics().CountRequest(res.status);
        return httplib::Server::HandlerResponse::Handled;
      }));
  s.set_pre_routing_handler([core](const httplib::Request& req, httplib::Response& res) {
    return RouteGuard(core, req, res);
  });
  s.set_exception_handler(
      [core](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "internal error";
        try {
          if (ep) std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        ApiError e;
        e.http_status = 500;
        e.type = "server_error";
        e.message = what;
        SendJson(res, 500, e.ToJson());
        core->metrics().CountRequest(500);
      });
}

}  // namespace krul::worker
