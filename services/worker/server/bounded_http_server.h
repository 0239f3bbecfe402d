// An httplib::Server whose connections are bounded in number and in the time
// a client may take to send a request, so that slow or idle clients cannot
// take the worker's HTTP front end away from everybody else.
//
// cpp-httplib (0.11) serves each connection on a pool thread and only has a
// per-recv timeout: a client sending one byte a second holds a thread for as
// long as it likes, and the pool is the only connection limit. This class
// keeps httplib's request parsing, routing and response writing
// (Server::process_request) and replaces only the connection loop around it:
//
//  - Read deadlines. A request's line and headers must arrive within
//    `header_timeout` (from the accept, or from the first byte of a later
//    request on a kept-alive connection), its body within `body_timeout`
//    after the headers. Past it the connection is closed (or, while a
//    handler reads the body, the read fails and ReadTimedOut() says why).
//  - A connection limit of its own (`max_connections` pool threads),
//    separate from the worker's compute slots. At the limit a new connection
//    takes the slot of the oldest idle keep-alive connection, else of the
//    oldest one still sending its request (those are closed); when every
//    slot runs a handler (and four per slot wait for a thread) it gets a fast 503
//    and is closed. So a probe
//    (/healthz, /readyz, /metrics) is answered however many slow clients
//    connect, as long as handlers do not hold every slot (the worker sizes
//    the limit above its compute slots plus queue).
//  - Idle keep-alive connections wait at most `keep_alive_timeout` and
//    serve at most `keep_alive_max_requests` requests, and give up their
//    slot at once when a new connection needs it.
//  - Stop() works at any moment, also before Serve's loop has started.
//
// Handlers tell the connection what phase its request is in through the
// static calls below (they act on the connection the calling thread serves):
// a handler that reads the body with a ContentReader calls BodyPhase() first
// (the pre-routing handler does) and HandlerPhase() once it has the body.
//
// Thread-safe as httplib::Server is: configure, Bind, then Serve on one
// thread and Stop from any.
#ifndef KRUL_SERVICES_WORKER_SERVER_BOUNDED_HTTP_SERVER_H_
#define KRUL_SERVICES_WORKER_SERVER_BOUNDED_HTTP_SERVER_H_

#include <httplib.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <mutex>
#include <string_view>

#include "absl/time/time.h"

namespace krul::worker {

struct HttpConnectionLimits {
  // Pool threads = connections served at once (>= 1).
  int max_connections = 128;
  absl::Duration header_timeout = absl::Seconds(10);
  absl::Duration body_timeout = absl::Seconds(30);
  absl::Duration keep_alive_timeout = absl::Seconds(5);
  int keep_alive_max_requests = 100;
  // Longest wait for a client to take more of a response.
  absl::Duration write_timeout = absl::Seconds(10);
};

// Connection events, for metrics. `event` is one of kHttpEvent*; called on
// the thread that saw it. `open` is the number of open connections.
struct HttpConnectionObserver {
  std::function<void(std::string_view event)> on_event;
  std::function<void(int open)> on_open_changed;
};
inline constexpr std::string_view kHttpEventAccepted = "accepted";
inline constexpr std::string_view kHttpEventEvicted = "evicted";    // slot given to a newer one
inline constexpr std::string_view kHttpEventRejected = "rejected";  // 503: every slot busy
inline constexpr std::string_view kHttpEventReadTimeout = "read_timeout";

class BoundedHttpServer : public httplib::Server {
 public:
  BoundedHttpServer(const HttpConnectionLimits& limits, HttpConnectionObserver observer);
  ~BoundedHttpServer() override;

  // listen_after_bind(), unless Stop() came first.
  void Serve();
  // Stops accepting, closes idle and still-reading connections, and makes
  // Serve return once running handlers are done. Safe before, during and
  // after Serve, and more than once.
  void Stop();

  // Open connections (served now or queued for a thread).
  int open_connections() const;

  // ---- for handlers, about the connection of the calling thread ----------
  // The headers are in; the body must arrive within body_timeout from now.
  static void BodyPhase();
  // The request is read: no read deadline; the connection is no longer
  // given to a newer one.
  static void HandlerPhase();
  // Close the connection after `res` (e.g. the body was not read); says so
  // in its Connection header.
  static void CloseAfterResponse(httplib::Response& res);
  // Whether a read of this request failed because its deadline passed.
  static bool ReadTimedOut();

 private:
  class ConnectionQueue;
  class DeadlineStream;
  enum class Phase { kIdle, kReading, kHandling };
  struct Connection {
    int fd = -1;
    Phase phase = Phase::kIdle;
    absl::Time since;  // phase start
    bool evicted = false;
    DeadlineStream* stream = nullptr;
    BoundedHttpServer* server = nullptr;
    bool close_after = false;
  };
  enum class Admission { kFree, kEvicted, kRejected };

  bool process_and_close_socket(socket_t sock) override;
  void RejectBusy(socket_t sock);
  // Takes a slot for a new connection: a free one, or one of a connection
  // that is closed for it; in a burst, a place in the queue for a thread.
  Admission Admit();
  // Closes the connection whose slot is given away next (see Admit); false
  // when every one runs a handler or is already closing. Under mu_.
  bool EvictOneLocked();
  void SetPhase(Connection* c, Phase phase);
  // Whether Admit gave c's slot to a newer connection (under mu_).
  bool Evicted(const Connection* c) const;
  void NotifyOpen(int open);

  const HttpConnectionLimits limits_;
  const HttpConnectionObserver observer_;
  std::atomic<bool> stopping_{false};
  // The connection the calling thread serves; set while it runs
  // process_and_close_socket. rejecting_: the connection at hand gets a 503.
  static thread_local Connection* current_;
  static thread_local bool rejecting_;

  mutable std::mutex mu_;
  std::condition_variable serve_cv_;
  std::list<Connection> connections_;  // registered (served by a thread)
  int queued_ = 0;                     // admitted, waiting for a thread
  int evicting_ = 0;                   // evicted, not yet unregistered
  bool stop_requested_ = false;
  bool serving_ = false;
  bool stopped_listener_ = false;
};

}  // namespace krul::worker

#endif  // KRUL_SERVICES_WORKER_SERVER_BOUNDED_HTTP_SERVER_H_
