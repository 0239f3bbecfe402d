// krul-worker's HTTP front end under hostile or careless clients, as a real
// process on a loopback port: slow connections (headers or body at one byte
// a second) do not stop the probes or chat, bodies stay within
// --max_request_bytes whatever their transfer encoding (and the worker's
// memory with them), wrong methods get 405, idle keep-alive connections do
// not hold the server, and a SIGTERM right after start-up ends the process.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "test_support/child_process.h"
#include "test_support/wait.h"

namespace krul::worker {
namespace {

using krul::testing::ChildProcess;
using krul::testing::PortFromLine;
using krul::testing::WaitFor;
using nlohmann::json;

struct Worker {
  std::unique_ptr<ChildProcess> process;
  int port = 0;
};

// A small synthetic model: these tests are about the front end.
absl::StatusOr<Worker> StartWorker(const std::vector<std::string>& extra = {}) {
  std::vector<std::string> argv = {KRUL_WORKER_BIN,
                                   "--host=127.0.0.1",
                                   "--http_port=0",
                                   "--synthetic",
                                   "--synthetic_shape=64,172,2,8,4,512,256",
                                   "--model_name=krul-test",
                                   "--threads=1",
                                   "--probe_compute=false",
                                   "--probe_load=false",
                                   "--freeze_costs",
                                   "--log_level=warning"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  auto process = ChildProcess::Start(argv, "krul-worker listening on");
  if (!process.ok()) return process.status();
  Worker w;
  w.port = PortFromLine((*process)->ready_line());
  if (w.port <= 0) return absl::InternalError("no port in: " + (*process)->ready_line());
  w.process = *std::move(process);
  return w;
}

int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool SendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

struct RawResponse {
  int status = 0;  // 0: none (closed or timed out first)
  std::string head;
  std::string body;
  std::string Header(const std::string& name) const {
    for (absl::string_view line : absl::StrSplit(head, "\r\n")) {
      const size_t colon = line.find(':');
      if (colon == absl::string_view::npos) continue;
      if (absl::EqualsIgnoreCase(line.substr(0, colon), name)) {
        return std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
      }
    }
    return "";
  }
};

// Reads one response (head + Content-Length body) until `deadline`.
RawResponse ReadResponse(int fd, absl::Time deadline) {
  RawResponse r;
  std::string data;
  size_t want = std::string::npos;
  while (absl::Now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    const int ready =
        poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now())) + 1);
    if (ready <= 0) break;
    char buf[16384];
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    data.append(buf, static_cast<size_t>(n));
    const size_t end = data.find("\r\n\r\n");
    if (end != std::string::npos && want == std::string::npos) {
      r.head = data.substr(0, end);
      size_t length = 0;
      RawResponse probe;
      probe.head = r.head;
      if (!absl::SimpleAtoi(probe.Header("Content-Length"), &length)) length = 0;
      want = end + 4 + length;
    }
    if (want != std::string::npos && data.size() >= want) break;
  }
  if (want == std::string::npos) return r;
  r.body = data.substr(r.head.size() + 4);
  std::vector<std::string> first = absl::StrSplit(r.head.substr(0, r.head.find("\r\n")), ' ');
  if (first.size() >= 2) (void)absl::SimpleAtoi(first[1], &r.status);
  return r;
}

// One request on a fresh connection, answered within `timeout`.
RawResponse Exchange(int port, const std::string& request,
                     absl::Duration timeout = absl::Seconds(10)) {
  const int fd = Connect(port);
  if (fd < 0) return {};
  RawResponse r;
  if (SendAll(fd, request)) r = ReadResponse(fd, absl::Now() + timeout);
  close(fd);
  return r;
}

std::string ChatBody(int max_tokens) {
  return json{{"model", "krul-test"},
              {"messages", {{{"role", "user"}, {"content", "Tell me a story."}}}},
              {"max_tokens", max_tokens},
              {"temperature", 0}}
      .dump();
}

std::string Post(const std::string& path, const std::string& body,
                 const std::string& content_type = "application/json") {
  return absl::StrCat("POST ", path, " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: ", content_type,
                      "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n\r\n", body);
}

const char kHealthz[] = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";

double MetricValue(int port, const std::string& name_and_labels) {
  RawResponse r = Exchange(port, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  for (absl::string_view line : absl::StrSplit(r.body, '\n')) {
    if (absl::StartsWith(line, name_and_labels + " ")) {
      double v = 0;
      if (absl::SimpleAtod(line.substr(name_and_labels.size() + 1), &v)) return v;
    }
  }
  return 0;
}

// VmRSS of `pid` in bytes (0 when unreadable).
int64_t RssBytes(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, "VmRSS:")) {
      int64_t kb = 0;
      std::vector<std::string> parts = absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (parts.size() >= 2 && absl::SimpleAtoi(parts[1], &kb)) return kb * 1024;
    }
  }
  return 0;
}

// Connections that each send a prefix at once and then the rest of a
// request one byte a second (the load's shape, not a wait) until stopped
// or answered / closed by the server.
class SlowClients {
 public:
  struct Request {
    std::string at_once;
    std::string slowly;
  };
  SlowClients(int port, const std::vector<Request>& requests) {
    for (const Request& r : requests) {
      const int fd = Connect(port);
      if (fd < 0 || !SendAll(fd, r.at_once)) continue;
      conns_.push_back({fd, r.slowly, 0, false});
    }
    thread_ = std::thread([this] { Run(); });
  }
  ~SlowClients() {
    stop_ = true;
    thread_.join();
    for (const Conn& c : conns_) close(c.fd);
  }
  int connected() const { return static_cast<int>(conns_.size()); }
  int closed_by_server() const { return closed_; }

 private:
  struct Conn {
    int fd;
    std::string rest;
    size_t sent;
    bool done;
  };
  void Run() {
    while (!stop_) {
      for (Conn& c : conns_) {
        if (c.done) continue;
        pollfd p{c.fd, POLLIN, 0};
        if (poll(&p, 1, 0) > 0) {  // answered or closed: stop sending
          c.done = true;
          ++closed_;
          continue;
        }
        if (c.sent < c.rest.size() &&
            send(c.fd, c.rest.data() + c.sent, 1, MSG_NOSIGNAL | MSG_DONTWAIT) == 1) {
          ++c.sent;
        }
      }
      for (int i = 0; i < 10 && !stop_; ++i) absl::SleepFor(absl::Milliseconds(100));
    }
  }
  std::vector<Conn> conns_;
  std::atomic<bool> stop_{false};
  std::atomic<int> closed_{0};
  std::thread thread_;
};

// 20 connections that send their headers, or their body, at one byte a
// second hold every connection slot there is (12); /healthz is still
// answered within a second and a chat request succeeds, and the read
// deadlines then close the slow ones.
TEST(WorkerHttpHardeningTest, SlowConnectionsDoNotStopProbesOrChat) {
  auto w = StartWorker({"--max_queue=2", "--http_max_connections=12", "--http_header_timeout=3s",
                        "--http_body_timeout=3s"});
  ASSERT_TRUE(w.ok()) << w.status();
  std::vector<SlowClients::Request> requests;
  const std::string body = ChatBody(4);
  for (int i = 0; i < 10; ++i) {
    // Slow headers.
    requests.push_back(
        {"", "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaa\r\n\r\n"});
    // A slow body: the headers at once, then the body byte by byte.
    requests.push_back({absl::StrCat("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                     "Content-Type: application/json\r\nContent-Length: ",
                                     body.size(), "\r\n\r\n"),
                        body});
  }
  SlowClients slow(w->port, requests);
  ASSERT_EQ(slow.connected(), 20);
  // Every /metrics poll is a connection too: all 20 slow ones are in once
  // the count passes 20 plus the polls made.
  int polls = 0;
  ASSERT_TRUE(WaitFor(
      [&] {
        ++polls;
        return MetricValue(w->port, "krul_worker_http_connections_total{event=\"accepted\"}") >=
               20 + polls;
      },
      absl::Seconds(10), "the 20 slow connections to be accepted"))
      << Exchange(w->port, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").body;

  absl::Duration worst;
  for (int i = 0; i < 5; ++i) {
    const absl::Time start = absl::Now();
    RawResponse r = Exchange(w->port, kHealthz, absl::Seconds(1));
    const absl::Duration took = absl::Now() - start;
    worst = std::max(worst, took);
    EXPECT_EQ(r.status, 200) << "probe " << i << " took " << took;
    EXPECT_LT(took, absl::Seconds(1));
  }
  std::printf("healthz under 20 slow connections (12 slots): worst of 5 = %s\n",
              absl::FormatDuration(worst).c_str());
  RawResponse chat = Exchange(w->port, Post("/v1/chat/completions", ChatBody(4)));
  EXPECT_EQ(chat.status, 200) << chat.body;

  // The slots were handed over (evicted), and the deadlines close the rest.
  EXPECT_GE(MetricValue(w->port, "krul_worker_http_connections_total{event=\"evicted\"}"), 8);
  EXPECT_TRUE(WaitFor(
      [&] {
        return MetricValue(w->port, "krul_worker_http_connections_total{event=\"read_timeout\"}") >=
               1;
      },
      absl::Seconds(10), "a read deadline to close a slow connection"));
  EXPECT_TRUE(WaitFor([&] { return slow.closed_by_server() == 20; }, absl::Seconds(10),
                      "every slow connection to be closed by the worker"));
  RawResponse after = Exchange(w->port, Post("/v1/chat/completions", ChatBody(4)));
  EXPECT_EQ(after.status, 200) << after.body;
  EXPECT_EQ(w->process->Terminate(), 0);
}

// A slow body (its bytes keep coming, one a second) gets 408 naming
// --http_body_timeout once that passes.
TEST(WorkerHttpHardeningTest, SlowBodyGets408) {
  auto w = StartWorker({"--http_body_timeout=1s"});
  ASSERT_TRUE(w.ok()) << w.status();
  const int fd = Connect(w->port);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendAll(
      fd, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"));
  RawResponse r;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (r.status == 0 && absl::Now() < deadline) {
    (void)send(fd, " ", 1, MSG_NOSIGNAL);
    r = ReadResponse(fd, absl::Now() + absl::Milliseconds(500));
  }
  close(fd);
  EXPECT_EQ(r.status, 408);
  EXPECT_NE(r.body.find("--http_body_timeout"), std::string::npos) << r.body;
  EXPECT_EQ(w->process->Terminate(), 0);
}

// A 200 MB chunked body is refused with 413 naming --max_request_bytes
// after at most that many bytes were kept, and the worker's RSS does not
// grow by the body's size.
TEST(WorkerHttpHardeningTest, ChunkedBodyOverTheLimitIs413AndCostsNoMemory) {
  auto w = StartWorker({"--max_request_bytes=1M"});
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_EQ(Exchange(w->port, kHealthz).status, 200);
  const int64_t rss_before = RssBytes(w->process->pid());
  ASSERT_GT(rss_before, 0);

  const int fd = Connect(w->port);
  ASSERT_GE(fd, 0);
  timeval tv{2, 0};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  ASSERT_TRUE(SendAll(fd,
                      "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                      "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"));
  constexpr size_t kChunk = 64 << 10;
  constexpr int64_t kTotal = 200ll << 20;
  const std::string chunk =
      absl::StrCat(absl::Hex(kChunk), "\r\n", std::string(kChunk, 'x'), "\r\n");
  int64_t sent = 0;
  RawResponse r;
  while (sent < kTotal) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 0) > 0) break;  // answered before the end
    if (!SendAll(fd, chunk)) break;
    sent += kChunk;
  }
  if (sent >= kTotal) (void)SendAll(fd, "0\r\n\r\n");
  r = ReadResponse(fd, absl::Now() + absl::Seconds(10));
  close(fd);
  const int64_t rss_after = RssBytes(w->process->pid());
  std::printf("chunked 200 MB body: %lld MB sent before the answer, RSS %lld -> %lld MB\n",
              static_cast<long long>(sent >> 20), static_cast<long long>(rss_before >> 20),
              static_cast<long long>(rss_after >> 20));
  EXPECT_EQ(r.status, 413);
  EXPECT_NE(r.body.find("--max_request_bytes"), std::string::npos) << r.body;
  EXPECT_LT(rss_after - rss_before, 32ll << 20);
  EXPECT_EQ(Exchange(w->port, kHealthz).status, 200);
  EXPECT_EQ(w->process->Terminate(), 0);
}

// Every other way to send a body: a Content-Length over the limit is
// refused before it is sent; form-encoded bodies are not form-parsed (no
// 413 naming httplib's 8 KiB form limit); multipart is 415; a body to a
// path or method that takes none is refused unread.
TEST(WorkerHttpHardeningTest, BodyLimitsHoldForEveryEncoding) {
  auto w = StartWorker({"--max_request_bytes=64K"});
  ASSERT_TRUE(w.ok()) << w.status();
  const int port = w->port;

  RawResponse declared = Exchange(
      port, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n");
  EXPECT_EQ(declared.status, 413);
  EXPECT_NE(declared.body.find("--max_request_bytes"), std::string::npos) << declared.body;

  RawResponse form = Exchange(port, Post("/v1/chat/completions", "a=" + std::string(10000, 'b'),
                                         "application/x-www-form-urlencoded"));
  EXPECT_EQ(form.status, 400) << form.body;
  EXPECT_NE(form.body.find("not valid JSON"), std::string::npos) << form.body;

  RawResponse big_form = Exchange(port, Post("/v1/chat/completions", "a=" + std::string(70000, 'b'),
                                             "application/x-www-form-urlencoded"));
  EXPECT_EQ(big_form.status, 413);
  EXPECT_NE(big_form.body.find("--max_request_bytes"), std::string::npos) << big_form.body;

  RawResponse multipart = Exchange(port, Post("/v1/chat/completions", "--b\r\n\r\nx\r\n--b--\r\n",
                                              "multipart/form-data; boundary=b"));
  EXPECT_EQ(multipart.status, 415) << multipart.body;

  const std::string chunked_to_models =
      "POST /v1/models HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n";
  RawResponse models = Exchange(port, chunked_to_models);
  EXPECT_EQ(models.status, 405);
  EXPECT_EQ(models.Header("Connection"), "close");
  RawResponse nowhere = Exchange(
      port, "PUT /nowhere HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n");
  EXPECT_EQ(nowhere.status, 404);

  // A chunked body within the limit is served.
  const std::string body = ChatBody(2);
  RawResponse ok = Exchange(
      port, absl::StrCat("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n",
                         absl::Hex(body.size()), "\r\n", body, "\r\n0\r\n\r\n"));
  EXPECT_EQ(ok.status, 200) << ok.body;
  EXPECT_EQ(w->process->Terminate(), 0);
}

// GET on the chat path is 405 with Allow and an OpenAI error body; a prompt
// beyond the context has the OpenAI code "context_length_exceeded".
TEST(WorkerHttpHardeningTest, MethodAndContextErrorsAreOpenAiShaped) {
  auto w = StartWorker();
  ASSERT_TRUE(w.ok()) << w.status();
  RawResponse get = Exchange(
      w->port, "GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(get.status, 405);
  EXPECT_EQ(get.Header("Allow"), "POST");
  json error = json::parse(get.body, nullptr, false);
  ASSERT_TRUE(error.contains("error")) << get.body;
  EXPECT_EQ(error["error"]["type"], "invalid_request_error");

  std::string long_text;
  for (int i = 0; i < 600; ++i) long_text += "story ";
  const std::string body =
      json{{"messages", {{{"role", "user"}, {"content", long_text}}}}, {"max_tokens", 4}}.dump();
  RawResponse too_long = Exchange(w->port, Post("/v1/chat/completions", body));
  EXPECT_EQ(too_long.status, 400);
  json e = json::parse(too_long.body, nullptr, false);
  ASSERT_TRUE(e.contains("error")) << too_long.body;
  EXPECT_EQ(e["error"]["code"], "context_length_exceeded") << too_long.body;
  EXPECT_EQ(w->process->Terminate(), 0);
}

// Idle keep-alive connections do not hold the server: with 4 slots, 6
// kept-alive clients and then fresh ones are all served, and one client's
// 20 requests use one connection.
TEST(WorkerHttpHardeningTest, IdleKeepAliveConnectionsDoNotHoldSlots) {
  auto w =
      StartWorker({"--max_queue=2", "--http_max_connections=4", "--http_keep_alive_timeout=30s"});
  ASSERT_TRUE(w.ok()) << w.status();
  const double accepted_before =
      MetricValue(w->port, "krul_worker_http_connections_total{event=\"accepted\"}");
  httplib::Client one("127.0.0.1", w->port);
  one.set_keep_alive(true);
  for (int i = 0; i < 20; ++i) {
    auto r = one.Get("/healthz");
    ASSERT_TRUE(r) << i;
    EXPECT_EQ(r->status, 200);
  }
  // The /metrics request below is one more connection.
  EXPECT_EQ(MetricValue(w->port, "krul_worker_http_connections_total{event=\"accepted\"}"),
            accepted_before + 2);

  std::vector<std::unique_ptr<httplib::Client>> idle;
  for (int i = 0; i < 6; ++i) {
    idle.push_back(std::make_unique<httplib::Client>("127.0.0.1", w->port));
    idle.back()->set_keep_alive(true);
    auto r = idle.back()->Get("/healthz");
    ASSERT_TRUE(r) << i;  // each took a slot from an idle one when needed
    EXPECT_EQ(r->status, 200);
  }
  const absl::Time start = absl::Now();
  RawResponse chat = Exchange(w->port, Post("/v1/chat/completions", ChatBody(2)));
  EXPECT_EQ(chat.status, 200) << chat.body;
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  for (auto& c : idle) {  // a closed one reconnects
    auto r = c->Get("/healthz");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
  }
  EXPECT_GE(MetricValue(w->port, "krul_worker_http_connections_total{event=\"evicted\"}"), 1);
  EXPECT_EQ(w->process->Terminate(), 0);
}

// A SIGTERM as soon as the worker says it listens ends it cleanly, every
// time (it used to hang about one start in eight: the HTTP server's stop
// came before its accept loop ran and was lost).
TEST(WorkerHttpHardeningTest, SigtermRightAfterStartExitsCleanly) {
  for (int i = 0; i < 20; ++i) {
    auto w = StartWorker({"--probe_compute=false"});
    ASSERT_TRUE(w.ok()) << w.status();
    EXPECT_EQ(w->process->Terminate(absl::Seconds(10)), 0) << "start " << i;
  }
}

}  // namespace
}  // namespace krul::worker
