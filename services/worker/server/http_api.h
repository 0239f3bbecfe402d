// The worker's HTTP front end (cpp-httplib): the OpenAI-compatible chat API
// plus health, readiness and Prometheus metrics on one port.
//
//   POST /v1/chat/completions  JSON, or SSE when "stream": true
//   GET  /v1/models            the one model this worker serves
//   GET  /healthz              200 while the process runs
//   GET  /readyz               200 once the model is loaded, 503 when draining
//   GET  /metrics              Prometheus text format (WorkerMetrics)
//
// With API keys (api_keys.h) every /v1 route needs `Authorization: Bearer
// <key>`: without one, or with a wrong one, it answers 401 with an OpenAI
// error whose code is "invalid_api_key"; the key's tenant scopes the
// request's conversation ids. /healthz, /readyz and /metrics need no key.
//
// Errors are OpenAI error objects (openai_api.h). A full queue answers 429
// with Retry-After. Streaming answers get their HTTP status only after the
// first token was sampled, so every error up to then (validation, context
// overflow, queue full) is a proper status code, not an SSE error event.
//
// Bounded resources (bounded_http_server.h, --http_* flags): at most
// --http_max_connections connections (a newer one takes an idle or
// still-sending one's slot, else gets a fast 503), each request's headers
// due within --http_header_timeout and its body within --http_body_timeout
// (408 / closed), bodies within --max_request_bytes whatever their
// transfer encoding (413), a body sent to a path or method that takes none
// refused unread (404 / 405 with Allow). Stop() works at any moment.
//
// Thread-safe.
#ifndef KRUL_SERVICES_WORKER_SERVER_HTTP_API_H_
#define KRUL_SERVICES_WORKER_SERVER_HTTP_API_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "worker/core/worker_core.h"
#include "worker/server/api_keys.h"

namespace krul::worker {

class BoundedHttpServer;

class HttpApi {
 public:
  // `core` is borrowed and must outlive the server. `api_keys` null: no
  // keys, one tenant (Bind allows that only as CheckHttpWithoutApiKeys does).
  explicit HttpApi(WorkerCore* core, std::unique_ptr<ApiKeys> api_keys = nullptr);
  ~HttpApi();

  // Binds `host:port` (0 = an ephemeral port) and returns the bound port.
  // UNAVAILABLE when the address cannot be bound; FAILED_PRECONDITION for
  // a non-loopback host without API keys (and without --insecure_http).
  absl::StatusOr<int> Bind(const std::string& host, int port);
  // Serves until Stop(); returns at once if Bind failed.
  void Serve();
  // Stops accepting connections and returns Serve (thread-safe).
  void Stop();

 private:
  void Routes();
  WorkerCore* core_;
  std::unique_ptr<ApiKeys> api_keys_;  // null: no keys
  std::unique_ptr<BoundedHttpServer> server_;
};

}  // namespace krul::worker

#endif  // KRUL_SERVICES_WORKER_SERVER_HTTP_API_H_
