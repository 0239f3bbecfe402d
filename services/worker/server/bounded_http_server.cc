#include "worker/server/bounded_http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <utility>

#include "absl/time/clock.h"

namespace krul::worker {
namespace {

// Longest single poll: waits re-check the stop flag this often.
constexpr absl::Duration kPollSlice = absl::Milliseconds(100);
// After an answer that refused a body: how long, and how much of it, is read
// and dropped before the close (see process_and_close_socket).
constexpr absl::Duration kLingerTime = absl::Seconds(1);
constexpr size_t kLingerBytes = 16 << 20;
// In a burst of connects, this many per slot may wait for a thread before a
// new one is refused (see Admit).
constexpr int kQueuedPerSlot = 4;

int PollMillis(absl::Duration d) {
  return static_cast<int>(std::clamp<int64_t>(absl::ToInt64Milliseconds(d) + 1, 0, 1 << 30));
}

void AddressOf(bool peer, int fd, std::string& ip, int& port) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  const int rc = peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len)
                      : getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  if (rc != 0) return;
  char text[INET6_ADDRSTRLEN] = {};
  if (addr.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &a->sin_addr, text, sizeof(text));
    port = ntohs(a->sin_port);
  } else if (addr.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&addr);
    inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof(text));
    port = ntohs(a->sin6_port);
  }
  ip = text;
}

}  // namespace

thread_local BoundedHttpServer::Connection* BoundedHttpServer::current_ = nullptr;
thread_local bool BoundedHttpServer::rejecting_ = false;

// A socket stream whose reads fail once the request's deadline passes (not
// only when one recv waits too long, as httplib's own does), buffered like
// httplib's so that the byte-wise header parser costs no syscall per byte.
class BoundedHttpServer::DeadlineStream final : public httplib::Stream {
 public:
  DeadlineStream(int fd, absl::Duration write_timeout, const std::atomic<bool>* stopping)
      : fd_(fd), write_timeout_(write_timeout), stopping_(stopping) {}

  void set_deadline(absl::Time deadline) {
    deadline_ = deadline;
    timed_out_ = false;
  }
  bool timed_out() const { return timed_out_; }
  bool has_buffered() const { return pos_ < len_; }

  // True when the socket has data or reached EOF / an error; false when
  // `until` passed (timed_out() then says so) or the server stops.
  bool WaitReadable(absl::Time until) const {
    while (!stopping_->load(std::memory_order_relaxed)) {
      const absl::Duration left = until - absl::Now();
      if (left <= absl::ZeroDuration()) {
        timed_out_ = true;
        return false;
      }
      pollfd p{fd_, POLLIN, 0};
      const int n = poll(&p, 1, PollMillis(std::min(left, kPollSlice)));
      if (n > 0) return true;
      if (n < 0 && errno != EINTR) return true;  // let recv report it
    }
    return false;
  }

  bool is_readable() const override { return has_buffered() || WaitReadable(deadline_); }

  bool is_writable() const override {
    pollfd p{fd_, POLLOUT, 0};
    int n;
    do {
      n = poll(&p, 1, PollMillis(write_timeout_));
    } while (n < 0 && errno == EINTR);
    return n > 0 && (p.revents & (POLLERR | POLLHUP)) == 0;
  }

  ssize_t read(char* ptr, size_t size) override {
    if (has_buffered()) return TakeBuffered(ptr, size);
    if (!WaitReadable(deadline_)) return -1;
    if (size >= sizeof(buffer_)) return Recv(ptr, size);
    const ssize_t n = Recv(buffer_, sizeof(buffer_));
    if (n <= 0) return n;
    pos_ = 0;
    len_ = static_cast<size_t>(n);
    return TakeBuffered(ptr, size);
  }

  ssize_t write(const char* ptr, size_t size) override {
    if (!is_writable()) return -1;
    ssize_t n;
    do {
      n = send(fd_, ptr, size, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    return n;
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    AddressOf(true, fd_, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    AddressOf(false, fd_, ip, port);
  }
  socket_t socket() const override { return fd_; }

 private:
  ssize_t TakeBuffered(char* ptr, size_t size) {
    const size_t n = std::min(size, len_ - pos_);
    std::memcpy(ptr, buffer_ + pos_, n);
    pos_ += n;
    return static_cast<ssize_t>(n);
  }
  ssize_t Recv(char* ptr, size_t size) {
    ssize_t n;
    do {
      n = recv(fd_, ptr, size, 0);
    } while (n < 0 && errno == EINTR);
    return n;
  }

  const int fd_;
  const absl::Duration write_timeout_;
  const std::atomic<bool>* stopping_;
  absl::Time deadline_ = absl::InfiniteFuture();
  mutable bool timed_out_ = false;
  char buffer_[4096];
  size_t pos_ = 0;
  size_t len_ = 0;
};

// httplib's listen loop hands every accepted socket to the task queue: this
// one admits it to the pool, or answers 503 on the listening thread (a
// small write to a fresh socket does not block) when every slot is busy.
class BoundedHttpServer::ConnectionQueue final : public httplib::TaskQueue {
 public:
  explicit ConnectionQueue(BoundedHttpServer* server)
      : server_(server), pool_(static_cast<size_t>(server->limits_.max_connections)) {}

  void enqueue(std::function<void()> fn) override {
    if (server_->Admit() != Admission::kRejected) {
      pool_.enqueue(std::move(fn));
      return;
    }
    rejecting_ = true;  // fn calls process_and_close_socket, which answers 503
    fn();
    rejecting_ = false;
  }
  void shutdown() override { pool_.shutdown(); }

 private:
  BoundedHttpServer* server_;
  httplib::ThreadPool pool_;
};

BoundedHttpServer::BoundedHttpServer(const HttpConnectionLimits& limits,
                                     HttpConnectionObserver observer)
    : limits_(limits), observer_(std::move(observer)) {
  new_task_queue = [this]() -> httplib::TaskQueue* { return new ConnectionQueue(this); };
  // httplib still uses these: the Keep-Alive response header advertises
  // them, and the listener sets them as the socket's SO_RCVTIMEO/SO_SNDTIMEO.
  set_keep_alive_max_count(static_cast<size_t>(std::max(1, limits_.keep_alive_max_requests)));
  set_keep_alive_timeout(std::max<time_t>(
      1, absl::ToInt64Seconds(absl::Ceil(limits_.keep_alive_timeout, absl::Seconds(1)))));
  const auto write_us = absl::ToInt64Microseconds(limits_.write_timeout);
  set_write_timeout(write_us / 1000000, write_us % 1000000);
  const auto read_us = absl::ToInt64Microseconds(limits_.header_timeout);
  set_read_timeout(read_us / 1000000, read_us % 1000000);
}

BoundedHttpServer::~BoundedHttpServer() = default;

void BoundedHttpServer::Serve() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_requested_) return;
    serving_ = true;
  }
  // httplib listens with a backlog of 5: a burst of more new connections
  // than that lost SYNs, and those clients waited a second for the retry.
  // Listening again on the bound socket raises it.
  if (const socket_t fd = svr_sock_.load(); fd != INVALID_SOCKET) ::listen(fd, SOMAXCONN);
  listen_after_bind();
  {
    std::lock_guard<std::mutex> lock(mu_);
    serving_ = false;
  }
  serve_cv_.notify_all();
}

void BoundedHttpServer::Stop() {
  std::unique_lock<std::mutex> lock(mu_);
  stop_requested_ = true;
  stopping_ = true;
  // httplib's stop() does nothing until listen_after_bind has entered its
  // accept loop (is_running()), and that loop would then run forever: a
  // stop right after Serve was started hung the worker. Wait for the loop
  // (or for Serve to have ended) first.
  while (serving_ && !is_running()) serve_cv_.wait_for(lock, std::chrono::milliseconds(1));
  if (serving_ && !stopped_listener_) {
    stopped_listener_ = true;
    httplib::Server::stop();
  }
  // Idle and still-reading connections end now; running handlers finish.
  for (Connection& c : connections_) {
    if (c.phase != Phase::kHandling) ::shutdown(c.fd, SHUT_RDWR);
  }
}

int BoundedHttpServer::open_connections() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(connections_.size()) + queued_;
}

bool BoundedHttpServer::EvictOneLocked() {
  // The oldest idle keep-alive connection, else the one that has been
  // waiting for or sending its request the longest; never one running a
  // handler.
  Connection* victim = nullptr;
  for (Connection& c : connections_) {
    if (c.evicted || c.phase == Phase::kHandling) continue;
    if (victim == nullptr) {
      victim = &c;
    } else if (c.phase != victim->phase) {
      if (c.phase == Phase::kIdle) victim = &c;
    } else if (c.since < victim->since) {
      victim = &c;
    }
  }
  if (victim == nullptr) return false;
  victim->evicted = true;
  ++evicting_;
  // Its thread's poll or recv returns at once; it then unregisters.
  ::shutdown(victim->fd, SHUT_RDWR);
  return true;
}

BoundedHttpServer::Admission BoundedHttpServer::Admit() {
  Admission result = Admission::kRejected;
  int open = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const int busy = static_cast<int>(connections_.size()) + queued_ - evicting_;
    if (busy < limits_.max_connections) {
      result = Admission::kFree;
    } else if (EvictOneLocked()) {
      result = Admission::kEvicted;
    } else if (queued_ < kQueuedPerSlot * limits_.max_connections) {
      // Connections still waiting for a thread are not handlers: in a burst
      // of connects the slots are taken by connections no thread has
      // registered yet. Queue this one; the registrations make room
      // (process_and_close_socket).
      result = Admission::kFree;
    }
    if (result != Admission::kRejected) ++queued_;
    open = static_cast<int>(connections_.size()) + queued_;
  }
  if (observer_.on_event) {
    observer_.on_event(result == Admission::kRejected ? kHttpEventRejected : kHttpEventAccepted);
    if (result == Admission::kEvicted) observer_.on_event(kHttpEventEvicted);
  }
  if (result != Admission::kRejected) NotifyOpen(open);
  return result;
}

void BoundedHttpServer::NotifyOpen(int open) {
  if (observer_.on_open_changed) observer_.on_open_changed(open);
}

bool BoundedHttpServer::Evicted(const Connection* c) const {
  std::lock_guard<std::mutex> lock(mu_);
  return c->evicted;
}

void BoundedHttpServer::SetPhase(Connection* c, Phase phase) {
  std::lock_guard<std::mutex> lock(mu_);
  c->phase = phase;
  c->since = absl::Now();
}

void BoundedHttpServer::RejectBusy(socket_t sock) {
  static const std::string kBusy = [] {
    const std::string body =
        R"j({"error":{"message":"every HTTP connection slot is busy (--http_max_connections)",)j"
        R"j("type":"server_error","param":null,"code":null}})j";
    return "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
           "Retry-After: 1\r\nConnection: close\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\n\r\n" + body;
  }();
  (void)!send(sock, kBusy.data(), kBusy.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  ::shutdown(sock, SHUT_RDWR);
  close(sock);
}

bool BoundedHttpServer::process_and_close_socket(socket_t sock) {
  if (rejecting_) {
    RejectBusy(sock);
    return false;
  }
  DeadlineStream stream(sock, limits_.write_timeout, &stopping_);
  std::list<Connection>::iterator it;
  int open = 0;
  int evicted = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    --queued_;
    Connection c;
    c.fd = sock;
    c.phase = Phase::kReading;  // waiting for its first request
    c.since = absl::Now();
    c.stream = &stream;
    c.server = this;
    it = connections_.insert(connections_.end(), c);
    open = static_cast<int>(connections_.size()) + queued_;
    if (stop_requested_) ::shutdown(sock, SHUT_RDWR);
    // More connections than slots (a burst queued beyond them): close the
    // oldest idle or reading ones until they fit.
    while (static_cast<int>(connections_.size()) + queued_ - evicting_ > limits_.max_connections &&
           EvictOneLocked()) {
      ++evicted;
    }
  }
  NotifyOpen(open);
  for (int i = 0; i < evicted && observer_.on_event; ++i) observer_.on_event(kHttpEventEvicted);
  Connection* c = &*it;
  current_ = c;

  bool ret = false;
  // The first request's line and headers are due header_timeout after the
  // accept; a later one's header_timeout after its first byte.
  absl::Time wait_until = absl::Now() + limits_.header_timeout;
  bool first = true;
  for (int left = std::max(1, limits_.keep_alive_max_requests); left > 0; --left) {
    if (!stream.has_buffered() && !stream.WaitReadable(wait_until)) {
      if (first && stream.timed_out() && observer_.on_event) {
        observer_.on_event(kHttpEventReadTimeout);
      }
      break;
    }
    SetPhase(c, Phase::kReading);
    stream.set_deadline(first ? wait_until : absl::Now() + limits_.header_timeout);
    bool connection_closed = false;
    ret = process_request(stream, /*close_connection=*/left == 1, connection_closed, nullptr);
    if (stream.timed_out() && observer_.on_event) observer_.on_event(kHttpEventReadTimeout);
    if (!ret || connection_closed || c->close_after || Evicted(c) || stream.timed_out() ||
        stopping_) {
      break;
    }
    SetPhase(c, Phase::kIdle);
    stream.set_deadline(absl::InfiniteFuture());
    c->close_after = false;
    first = false;
    wait_until = absl::Now() + limits_.keep_alive_timeout;
  }

  if (c->close_after && !Evicted(c) && !stopping_) {
    // The answer went out but the client may still be sending the body it
    // was refused: read and drop a bounded amount before closing, so the
    // close does not reset the connection before the client read the answer.
    SetPhase(c, Phase::kReading);
    ::shutdown(sock, SHUT_WR);
    const absl::Time until = absl::Now() + kLingerTime;
    char sink[16384];
    for (size_t dropped = 0; dropped < kLingerBytes && stream.WaitReadable(until);) {
      const ssize_t n = recv(sock, sink, sizeof(sink), 0);
      if (n <= 0) break;
      dropped += static_cast<size_t>(n);
    }
  }
  current_ = nullptr;
  {
    // Unregistered before the close, so that Admit never shuts down a
    // descriptor number that was reused by a newer connection.
    std::lock_guard<std::mutex> lock(mu_);
    if (c->evicted) --evicting_;
    connections_.erase(it);
    open = static_cast<int>(connections_.size()) + queued_;
  }
  NotifyOpen(open);
  ::shutdown(sock, SHUT_RDWR);
  close(sock);
  return ret;
}

void BoundedHttpServer::BodyPhase() {
  if (current_ == nullptr) return;
  current_->stream->set_deadline(absl::Now() + current_->server->limits_.body_timeout);
}

void BoundedHttpServer::HandlerPhase() {
  if (current_ == nullptr) return;
  current_->stream->set_deadline(absl::InfiniteFuture());
  current_->server->SetPhase(current_, Phase::kHandling);
}

void BoundedHttpServer::CloseAfterResponse(httplib::Response& res) {
  res.set_header("Connection", "close");
  if (current_ != nullptr) current_->close_after = true;
}

bool BoundedHttpServer::ReadTimedOut() {
  return current_ != nullptr && current_->stream->timed_out();
}

}  // namespace krul::worker
