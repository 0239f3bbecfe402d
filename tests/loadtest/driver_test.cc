// The driver against fake OpenAI-compatible servers on loopback (httplib,
// streaming SSE like the worker): turn order and history, load shapes,
// caps, routing, errors by kind, context limits, Stop(), and the request
// accounting. The servers answer from the request alone, so every expected
// value follows from the trace written in the test.
#include "client/driver.h"

#include <httplib.h>

#include <atomic>
#include <map>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_support/wait.h"
#include "worker/api/openai_api.h"

namespace krul::loadtest {
namespace {

using nlohmann::json;

// A fake worker: streams `tokens` words, then a final chunk with a "krul"
// object (mode = the requested krul_mode or "krul"; restore = "hit" after
// the first turn), the usage chunk and [DONE]. It fails turns whose user
// text starts with "FAIL <status>", and holds any answer to a text
// starting with "HOLD" until released.
class FakeWorker {
 public:
  explicit FakeWorker(int tokens = 3) : tokens_(tokens) {
    server_.Post("/v1/chat/completions",
                 [this](const httplib::Request& req, httplib::Response& res) { Handle(req, res); });
    port_ = server_.bind_to_any_port("127.0.0.1");
    // Bound already: connections wait in the backlog until it accepts.
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~FakeWorker() {
    Release();
    server_.stop();
    thread_.join();
  }

  Endpoint endpoint() const { return {"127.0.0.1", port_}; }
  std::vector<json> requests() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }
  std::vector<std::string> connection_headers() {
    std::lock_guard<std::mutex> lock(mu_);
    return connection_headers_;
  }
  int held() const { return held_.load(); }
  void Release() { released_.store(true); }

 private:
  void Handle(const httplib::Request& req, httplib::Response& res) {
    json body = json::parse(req.body);
    {
      std::lock_guard<std::mutex> lock(mu_);
      requests_.push_back(body);
      connection_headers_.push_back(req.get_header_value("Connection"));
    }
    const json& messages = body["messages"];
    const std::string user = messages.back()["content"];
    if (user.rfind("FAIL ", 0) == 0) {
      const int status = std::stoi(user.substr(5));
      worker::ApiError e;
      e.http_status = status;
      e.message = status == 400 ? "context_length_exceeded: too long" : "failed on purpose";
      res.status = status;
      res.set_content(e.ToJson().dump(), "application/json");
      return;
    }
    if (user.rfind("HOLD", 0) == 0) {
      ++held_;
      while (!released_.load()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    const std::string mode = body.value("krul_mode", "krul");
    const int turn = static_cast<int>(messages.size() / 2) + 1;
    const int prompt_tokens = static_cast<int>(messages.size()) * 10;
    const int tokens = std::min<int>(tokens_, body["max_tokens"].get<int>());
    res.set_chunked_content_provider("text/event-stream", [=](size_t, httplib::DataSink& sink) {
      auto send = [&](const std::string& s) { sink.write(s.data(), s.size()); };
      send(worker::SseEvent(
          worker::MakeChunkJson("id", 0, "m", std::string("assistant"), std::string(), {})));
      for (int i = 0; i < tokens; ++i) {
        send(worker::SseEvent(
            worker::MakeChunkJson("id", 0, "m", {}, absl::StrCat("w", i, " "), {})));
      }
      worker::CompletionStats stats;
      stats.mode = mode;
      stats.restore = turn > 1 ? "hit" : "none";
      stats.restored_tokens = turn > 1 ? prompt_tokens - 10 : 0;
      stats.prompt_tokens = prompt_tokens;
      stats.completion_tokens = tokens;
      json last = worker::MakeChunkJson("id", 0, "m", {}, {}, std::string("length"));
      last["krul"] = worker::MakeKrulJson(stats);
      send(worker::SseEvent(last));
      json usage = worker::MakeChunkJson("id", 0, "m", {}, {}, {});
      usage["choices"] = json::array();
      usage["usage"] = worker::MakeUsageJson(stats);
      send(worker::SseEvent(usage));
      send(worker::SseDone());
      sink.done();
      return true;
    });
  }

  const int tokens_;
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::vector<json> requests_;
  std::vector<std::string> connection_headers_;
  std::atomic<int> held_{0};
  std::atomic<bool> released_{false};
};

Trace TextTrace(const std::vector<std::vector<std::string>>& conversations) {
  Trace trace;
  trace.format = TraceFormat::kShareGpt;
  for (size_t c = 0; c < conversations.size(); ++c) {
    Conversation conversation;
    conversation.id = absl::StrCat("c", c);
    for (const std::string& text : conversations[c]) {
      Turn t;
      t.text = text;
      conversation.turns.push_back(t);
    }
    trace.conversations.push_back(conversation);
  }
  return trace;
}

DriverOptions Closed(int concurrency) {
  DriverOptions o;
  o.shape = LoadShape::kClosed;
  o.concurrency = concurrency;
  o.run_id = "run";
  o.output_tokens = 8;
  o.request_timeout_s = 30;
  return o;
}

void ExpectAccounted(const RunResult& r) {
  EXPECT_EQ(r.planned, static_cast<int>(r.records.size()) + r.not_sent.total());
}

TEST(DriverTest, ClosedLoopSendsEveryTurnWithItsHistory) {
  FakeWorker worker;
  const Trace trace = TextTrace({{"a1", "a2", "a3"}, {"b1", "b2"}, {"c1"}});
  Driver driver(trace, {worker.endpoint()}, Closed(2));
  const RunResult r = driver.Run();
  ASSERT_EQ(r.records.size(), 6u);
  ExpectAccounted(r);
  EXPECT_EQ(r.not_sent.total(), 0);
  for (const RequestRecord& rec : r.records) {
    EXPECT_TRUE(rec.result.ok()) << rec.result.error;
    EXPECT_GT(rec.result.ttft_ms, 0);
    EXPECT_GE(rec.result.e2e_ms, rec.result.ttft_ms);
    EXPECT_EQ(rec.result.content, "w0 w1 w2 ");
    EXPECT_EQ(rec.result.completion_tokens, 3);
    EXPECT_GE(rec.result.tpot_ms, 0);
    EXPECT_EQ(rec.mode, "krul");
    EXPECT_EQ(rec.restore, rec.turn > 1 ? "hit" : "none");
  }
  // Turn 3 of conversation a carries both earlier turns and their answers.
  json third;
  for (const json& req : worker.requests()) {
    if (req["messages"].back()["content"] == "a3") third = req;
  }
  ASSERT_FALSE(third.is_null());
  EXPECT_EQ(third["conversation_id"], "run/c0");
  ASSERT_EQ(third["messages"].size(), 5u);
  EXPECT_EQ(third["messages"][0]["content"], "a1");
  EXPECT_EQ(third["messages"][1]["role"], "assistant");
  EXPECT_EQ(third["messages"][1]["content"], "w0 w1 w2 ");
  EXPECT_EQ(third["messages"][2]["content"], "a2");
  EXPECT_TRUE(third["stream"].get<bool>());
  EXPECT_TRUE(third["stream_options"]["include_usage"].get<bool>());
  EXPECT_FALSE(third.contains("krul_mode"));  // the worker's own mode
  // No idle connection is left holding a server thread.
  for (const std::string& c : worker.connection_headers()) EXPECT_EQ(c, "close");
  // The history tokens are the worker's count for the turns before.
  for (const RequestRecord& rec : r.records) {
    if (rec.conversation == "c0" && rec.turn == 3) {
      EXPECT_EQ(rec.history_tokens, 30 + 3);
    }
  }
}

TEST(DriverTest, RequestCapAndModeField) {
  FakeWorker worker;
  const Trace trace = TextTrace({{"a1", "a2"}, {"b1", "b2"}, {"c1", "c2"}});
  DriverOptions o = Closed(1);
  o.max_requests = 3;
  o.mode = "cake";
  Driver driver(trace, {worker.endpoint()}, o);
  const RunResult r = driver.Run();
  EXPECT_EQ(r.records.size(), 3u);
  EXPECT_EQ(r.not_sent.max_requests, 3);
  ExpectAccounted(r);
  for (const json& req : worker.requests()) EXPECT_EQ(req["krul_mode"], "cake");
  EXPECT_EQ(r.records[0].mode, "cake");
  EXPECT_EQ(r.records[0].requested_mode, "cake");
}

TEST(DriverTest, ErrorsEndTheirConversationAndAreClassified) {
  FakeWorker worker;
  const Trace trace = TextTrace({{"FAIL 503", "never"}, {"FAIL 400", "never"}, {"ok", "fine"}});
  Driver driver(trace, {worker.endpoint(), {"127.0.0.1", 1}}, Closed(1));
  const RunResult r = driver.Run();
  ExpectAccounted(r);
  std::map<std::string, int> kinds;
  for (const RequestRecord& rec : r.records) ++kinds[rec.result.error_kind];
  // Round robin: requests 0, 2 go to the fake, 1, 3 to port 1 (refused).
  // c0: "FAIL 503" -> 503, "never" not sent; c1: "FAIL 400" -> refused,
  // "never" not sent; c2: "ok" answered, "fine" -> refused.
  EXPECT_EQ(kinds["http_503"], 1);
  EXPECT_EQ(kinds["connection"], 2);
  EXPECT_EQ(kinds[""], 1);
  EXPECT_EQ(r.not_sent.after_error, 2);
}

TEST(DriverTest, ContextLengthErrorsHaveTheirOwnKind) {
  FakeWorker worker;
  const Trace trace = TextTrace({{"FAIL 400", "never"}, {"FAIL 429"}});
  Driver driver(trace, {worker.endpoint()}, Closed(1));
  const RunResult r = driver.Run();
  ASSERT_EQ(r.records.size(), 2u);
  EXPECT_EQ(r.records[0].result.error_kind, "context_length");
  EXPECT_EQ(r.records[1].result.error_kind, "http_429");
  EXPECT_EQ(r.not_sent.after_error, 1);
  ExpectAccounted(r);
}

TEST(DriverTest, RoutingRoundRobinAndSticky) {
  FakeWorker w1, w2;
  const Trace trace = TextTrace({{"a1", "a2", "a3", "a4"}});
  Driver round_robin(trace, {w1.endpoint(), w2.endpoint()}, Closed(1));
  const RunResult rr = round_robin.Run();
  ASSERT_EQ(rr.records.size(), 4u);
  EXPECT_EQ(w1.requests().size(), 2u);
  EXPECT_EQ(w2.requests().size(), 2u);
  EXPECT_NE(rr.records[0].endpoint, rr.records[1].endpoint);  // turns alternate

  FakeWorker s1, s2;
  DriverOptions o = Closed(1);
  o.routing = Routing::kSticky;
  Driver sticky(trace, {s1.endpoint(), s2.endpoint()}, o);
  const RunResult rs = sticky.Run();
  ASSERT_EQ(rs.records.size(), 4u);
  EXPECT_EQ(s1.requests().size() + s2.requests().size(), 4u);
  EXPECT_TRUE(s1.requests().empty() || s2.requests().empty());  // one worker per conversation
}

TEST(DriverTest, OpenLoopKeepsTraceTimesScaledBySpeedup) {
  FakeWorker worker;
  Trace trace = TextTrace({{"a1", "a2"}, {"b1"}, {"c1"}});
  // Arrivals 0, 200, 400 ms; the second turn of a at 100 ms, before its
  // first answer can have come back only if the answer is instant.
  trace.conversations[0].turns[0].arrival_ms = 0;
  trace.conversations[0].turns[1].arrival_ms = 100;
  trace.conversations[1].turns[0].arrival_ms = 200;
  trace.conversations[2].turns[0].arrival_ms = 400;
  DriverOptions o = Closed(1);
  o.shape = LoadShape::kTrace;
  o.speedup = 2.0;  // 0, 50, 100, 200 ms
  o.max_inflight = 4;
  Driver driver(trace, {worker.endpoint()}, o);
  const RunResult r = driver.Run();
  ASSERT_EQ(r.records.size(), 4u);
  ExpectAccounted(r);
  std::map<std::string, const RequestRecord*> by_text;
  for (const RequestRecord& rec : r.records) {
    EXPECT_GE(rec.sent_s + 1e-9, rec.scheduled_s);
    by_text[absl::StrCat(rec.conversation, "/", rec.turn)] = &rec;
  }
  EXPECT_DOUBLE_EQ(by_text["c1/1"]->scheduled_s, 0.1);
  EXPECT_DOUBLE_EQ(by_text["c2/1"]->scheduled_s, 0.2);
  // A next turn waits for its answer, and for its own trace time.
  const RequestRecord* a2 = by_text["c0/2"];
  EXPECT_GE(a2->scheduled_s, 0.05);
  EXPECT_GE(a2->sent_s, by_text["c0/1"]->done_s());
}

TEST(DriverTest, SynthesizedMessagesAreCutToTheContext) {
  FakeWorker worker;
  Trace trace;
  Conversation c;
  c.id = "m";
  for (int t = 0; t < 3; ++t) {
    Turn turn;
    turn.blocks = {{static_cast<uint64_t>(t * 10 + 1), 512},
                   {static_cast<uint64_t>(t * 10 + 2), 512}};
    turn.message_tokens = 1024;
    turn.output_tokens = 4;
    turn.input_tokens = 1024;
    c.turns.push_back(turn);
  }
  trace.conversations.push_back(c);
  DriverOptions o = Closed(1);
  o.max_context_tokens = 60;  // the fake counts 10 tokens per message
  Driver driver(trace, {worker.endpoint()}, o);
  const RunResult r = driver.Run();
  ExpectAccounted(r);
  // Turn 1: room 0.9 * (60 - 0 - 4 - 8) = 43 words of 1024.
  ASSERT_GE(r.records.size(), 1u);
  const std::vector<json> requests = worker.requests();
  const std::string first = requests[0]["messages"][0]["content"];
  EXPECT_EQ(std::count(first.begin(), first.end(), ' ') + 1, 43);
  EXPECT_EQ(requests[0]["max_tokens"], 4);
  // History after turn 1: 10 prompt + 3 answer tokens; turn 2 gets
  // 0.9 * (60 - 13 - 4 - 8) = 31 words; after it 30 + 3 = 33, and turn 3
  // would get 0.9 * (60 - 33 - 12) = 13 words.
  ASSERT_EQ(r.records.size(), 3u);
  const std::string third = requests[2]["messages"].back()["content"];
  EXPECT_EQ(std::count(third.begin(), third.end(), ' ') + 1, 13);
}

TEST(DriverTest, ConversationsWithNoRoomLeftEnd) {
  FakeWorker worker;
  const Trace trace = TextTrace({{"a1", "a2", "a3"}});
  DriverOptions o = Closed(1);
  o.output_tokens = 8;
  o.max_context_tokens = 40;  // turn 2 sees 13 history + 8 + 8 = 29; turn 3: 33 + 16 > 40
  Driver driver(trace, {worker.endpoint()}, o);
  const RunResult r = driver.Run();
  EXPECT_EQ(r.records.size(), 2u);
  EXPECT_EQ(r.not_sent.context_full, 1);
  ExpectAccounted(r);
}

TEST(DriverTest, StopCancelsInFlightRequestsAndAccountsForTheRest) {
  FakeWorker worker;
  const Trace trace = TextTrace({{"HOLD", "after"}, {"HOLD too"}, {"waiting"}});
  Driver driver(trace, {worker.endpoint()}, Closed(2));
  RunResult r;
  std::thread run([&] { r = driver.Run(); });
  ASSERT_TRUE(krul::testing::WaitFor([&] { return worker.held() == 2; }, absl::Seconds(30),
                                     "both held requests to reach the server"));
  driver.Stop();
  run.join();
  worker.Release();
  EXPECT_TRUE(r.stopped);
  ASSERT_EQ(r.records.size(), 2u);
  for (const RequestRecord& rec : r.records) EXPECT_EQ(rec.result.error_kind, "cancelled");
  EXPECT_EQ(r.not_sent.stopped, 2);  // "after" and "waiting"
  ExpectAccounted(r);
}

TEST(DriverTest, DurationCapStopsNewRequests) {
  FakeWorker worker;
  std::vector<std::vector<std::string>> many(50, std::vector<std::string>{"x"});
  Trace trace = TextTrace(many);
  for (size_t c = 0; c < trace.conversations.size(); ++c) {
    trace.conversations[c].turns[0].arrival_ms = 200.0 * c;  // one every 200 ms
  }
  DriverOptions o = Closed(1);
  o.shape = LoadShape::kTrace;
  o.duration_s = 0.5;  // arrivals at 0, 200, 400 ms fit
  Driver driver(trace, {worker.endpoint()}, o);
  const RunResult r = driver.Run();
  EXPECT_EQ(r.records.size(), 3u);
  EXPECT_EQ(r.not_sent.duration, 47);
  ExpectAccounted(r);
}

TEST(DriverTest, ParsesNames) {
  EXPECT_EQ(*ParseLoadShape("poisson"), LoadShape::kPoisson);
  EXPECT_FALSE(ParseLoadShape("burst").ok());
  EXPECT_EQ(*ParseRouting("sticky"), Routing::kSticky);
  EXPECT_FALSE(ParseRouting("hash").ok());
  auto endpoints = ParseEndpoints("127.0.0.1:80, [::1]:81");
  ASSERT_TRUE(endpoints.ok());
  EXPECT_EQ((*endpoints)[1].host, "::1");
  EXPECT_EQ((*endpoints)[1].Name(), "[::1]:81");
  EXPECT_FALSE(ParseEndpoints("localhost").ok());
  EXPECT_FALSE(ParseEndpoints("h:99999").ok());
}

}  // namespace
}  // namespace krul::loadtest
