// The load tools against a worker that requires an API key (a fake on
// loopback that checks "Authorization: Bearer <key>" as the worker's
// --api_keys_file does and answers 401 invalid_api_key otherwise): with the
// key every request succeeds; without it, or with a wrong one, the first 401
// is reported as error kind "unauthorized" and no more requests are sent;
// and the key never appears in what the tools print or write
// (summary.json, requests.csv, the console), even when the server echoes
// it. The binaries are run as a user would: the key from --api_key or from
// KRUL_API_KEY / OPENAI_API_KEY.
#include "client/api_key.h"

#include <httplib.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/chat_client.h"
#include "client/chat_stream.h"
#include "client/driver.h"
#include "cluster/command.h"
#include "gtest/gtest.h"
#include "report/report.h"
#include "test_support/test_data.h"
#include "worker/api/openai_api.h"
namespace krul::loadtest {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kKey[] = "sk-krul-test-4f1c2a9e7b";
constexpr char kWrongKey[] = "sk-krul-wrong-0d6e33b8aa";

// Answers /v1/chat/completions (streamed or not) only with "Authorization:
// Bearer <key>"; else 401 with the worker's error shape, whose message
// repeats the header it got (a careless server: the tools must not pass
// that on). GET /metrics answers an empty exposition.
class KeyedWorker {
 public:
  explicit KeyedWorker(std::string key) : key_(std::move(key)) {
    server_.Post("/v1/chat/completions",
                 [this](const httplib::Request& req, httplib::Response& res) { Handle(req, res); });
    server_.Get("/metrics", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("", "text/plain");
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~KeyedWorker() {
    server_.stop();
    thread_.join();
  }

  Endpoint endpoint() const { return {"127.0.0.1", port_}; }
  std::string address() const { return endpoint().Name(); }
  int accepted() const { return accepted_.load(); }
  int refused() const { return refused_.load(); }

 private:
  void Handle(const httplib::Request& req, httplib::Response& res) {
    const std::string authorization = req.get_header_value("Authorization");
    if (authorization != "Bearer " + key_) {
      ++refused_;
      worker::ApiError e;
      e.http_status = 401;
      e.code = "invalid_api_key";
      e.message = "Incorrect API key provided: '" + authorization + "'";
      res.status = 401;
      res.set_header("WWW-Authenticate", "Bearer");
      res.set_content(e.ToJson().dump(), "application/json");
      return;
    }
    ++accepted_;
    const json body = json::parse(req.body);
    worker::CompletionStats stats;
    stats.mode = "krul";
    stats.restore = "none";
    stats.prompt_tokens = 0;  // one token per word, so the token probe measures 1
    for (const json& m : body["messages"]) {
      const std::vector<std::string> words =
          absl::StrSplit(m["content"].get<std::string>(), ' ', absl::SkipWhitespace());
      stats.prompt_tokens += static_cast<int>(words.size());
    }
    stats.completion_tokens = 2;
    if (!body.value("stream", false)) {
      json answer = {{"id", "id"},
                     {"object", "chat.completion"},
                     {"choices",
                      {{{"index", 0},
                        {"message", {{"role", "assistant"}, {"content", "w0 w1"}}},
                        {"finish_reason", "length"}}}},
                     {"usage", worker::MakeUsageJson(stats)},
                     {"krul", worker::MakeKrulJson(stats)}};
      res.set_content(answer.dump(), "application/json");
      return;
    }
    res.set_chunked_content_provider("text/event-stream", [stats](size_t, httplib::DataSink& sink) {
      auto send = [&](const std::string& s) { sink.write(s.data(), s.size()); };
      for (int i = 0; i < 2; ++i) {
        send(worker::SseEvent(
            worker::MakeChunkJson("id", 0, "m", {}, absl::StrCat("w", i, " "), {})));
      }
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

  const std::string key_;
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::atomic<int> accepted_{0};
  std::atomic<int> refused_{0};
};

json Request(const std::string& text) {
  return {{"messages", {{{"role", "user"}, {"content", text}}}}, {"max_tokens", 2}};
}

// `conversations` conversations of `turns` text turns each.
Trace TextTrace(int conversations, int turns) {
  Trace trace;
  trace.format = TraceFormat::kShareGpt;
  for (int c = 0; c < conversations; ++c) {
    Conversation conversation;
    conversation.id = absl::StrCat("c", c);
    for (int t = 0; t < turns; ++t) {
      Turn turn;
      turn.text = absl::StrCat("turn ", t, " of ", c);
      conversation.turns.push_back(turn);
    }
    trace.conversations.push_back(conversation);
  }
  return trace;
}

DriverOptions Closed(int concurrency, const std::string& api_key) {
  DriverOptions o;
  o.shape = LoadShape::kClosed;
  o.concurrency = concurrency;
  o.run_id = "keys";
  o.request_timeout_s = 30;
  o.api_key = api_key;
  return o;
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

using krul::testing::TempDir;

TEST(ApiKeyTest, TheFlagWinsThenKrulApiKeyThenOpenAiApiKey) {
  unsetenv("KRUL_API_KEY");
  unsetenv("OPENAI_API_KEY");
  EXPECT_EQ(ResolveApiKey("").source, "none");
  EXPECT_EQ(ResolveApiKey("").key, "");
  setenv("OPENAI_API_KEY", "from-openai", 1);
  EXPECT_EQ(ResolveApiKey("").key, "from-openai");
  EXPECT_EQ(ResolveApiKey("").source, "OPENAI_API_KEY");
  setenv("KRUL_API_KEY", "", 1);  // empty counts as unset
  EXPECT_EQ(ResolveApiKey("").key, "from-openai");
  setenv("KRUL_API_KEY", "from-krul", 1);
  EXPECT_EQ(ResolveApiKey("").key, "from-krul");
  EXPECT_EQ(ResolveApiKey("").source, "KRUL_API_KEY");
  EXPECT_EQ(ResolveApiKey("from-flag").key, "from-flag");
  EXPECT_EQ(ResolveApiKey("from-flag").source, "--api_key");
  unsetenv("KRUL_API_KEY");
  unsetenv("OPENAI_API_KEY");
  EXPECT_FALSE(absl::StrContains(UnauthorizedHint({"secret", "--api_key"}), "secret"));
  EXPECT_TRUE(absl::StrContains(UnauthorizedHint({"", "none"}), "KRUL_API_KEY"));
}

TEST(ApiKeyTest, StreamingChatSendsTheKeyAndReportsA401AsUnauthorized) {
  KeyedWorker worker(kKey);
  std::atomic<bool> never{false};
  StreamingChat with(worker.endpoint(), absl::Seconds(5), absl::Seconds(30), false, kKey);
  ChatResult ok = with.Send(Request("hello"), never);
  EXPECT_TRUE(ok.ok()) << ok.error_kind << ": " << ok.error;
  EXPECT_EQ(ok.content, "w0 w1 ");

  StreamingChat without(worker.endpoint(), absl::Seconds(5), absl::Seconds(30));
  ChatResult none = without.Send(Request("hello"), never);
  EXPECT_EQ(none.http_status, 401);
  EXPECT_EQ(none.error_kind, "unauthorized");
  EXPECT_TRUE(absl::StrContains(none.error, "no API key")) << none.error;

  StreamingChat wrong(worker.endpoint(), absl::Seconds(5), absl::Seconds(30), false, kWrongKey);
  ChatResult refused = wrong.Send(Request("hello"), never);
  EXPECT_EQ(refused.error_kind, "unauthorized");
  EXPECT_TRUE(absl::StrContains(refused.error, "refused")) << refused.error;
  // The fake echoes the header; the result must not carry the key on.
  EXPECT_TRUE(absl::StrContains(refused.error, "<api key>")) << refused.error;
  EXPECT_FALSE(absl::StrContains(refused.error, kWrongKey)) << refused.error;
  EXPECT_EQ(worker.accepted(), 1);
  EXPECT_EQ(worker.refused(), 2);
}

TEST(ApiKeyTest, ChatClientSendsTheKey) {
  KeyedWorker worker(kKey);
  worker::ChatClient with("127.0.0.1", worker.endpoint().port, kKey);
  worker::ChatReply streamed =
      with.Chat({{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"stream", true}});
  EXPECT_EQ(streamed.http_status, 200) << streamed.error;
  EXPECT_EQ(streamed.content, "w0 w1 ");
  EXPECT_EQ(with.Chat(Request("hi")).http_status, 200);

  worker::ChatClient wrong("127.0.0.1", worker.endpoint().port, kWrongKey);
  worker::ChatReply refused = wrong.Chat(Request("hi"));
  EXPECT_EQ(refused.http_status, 401);
  EXPECT_FALSE(absl::StrContains(refused.error, kWrongKey)) << refused.error;
  worker::ChatClient without("127.0.0.1", worker.endpoint().port);
  EXPECT_EQ(without.Chat(Request("hi")).http_status, 401);
}

TEST(ApiKeyTest, DriverWithTheKeyIsAnsweredAndNeverRecordsIt) {
  KeyedWorker worker(kKey);
  const Trace trace = TextTrace(3, 2);
  Driver driver(trace, {worker.endpoint()}, Closed(2, kKey));
  RunResult r = driver.Run();
  ASSERT_EQ(r.records.size(), 6u);
  for (const RequestRecord& record : r.records) {
    EXPECT_TRUE(record.result.ok()) << record.result.error_kind << ": " << record.result.error;
  }
  EXPECT_FALSE(r.unauthorized);
  EXPECT_EQ(worker.accepted(), 6);
  EXPECT_EQ(worker.refused(), 0);
  EXPECT_FALSE(absl::StrContains(SummarizeRun(r, {}).dump(), kKey));
  EXPECT_FALSE(absl::StrContains(RequestsCsv(r.records), kKey));
}

TEST(ApiKeyTest, DriverStopsAtTheFirst401InsteadOfSendingTheTrace) {
  KeyedWorker worker(kKey);
  const Trace trace = TextTrace(20, 3);  // 60 turns
  for (const std::string& key : {std::string(), std::string(kWrongKey)}) {
    SCOPED_TRACE(key.empty() ? "no key" : "wrong key");
    const int refused_before = worker.refused();
    Driver driver(trace, {worker.endpoint()}, Closed(4, key));
    RunResult r = driver.Run();
    EXPECT_TRUE(r.unauthorized);
    // At most the requests already in flight when the first 401 came.
    ASSERT_GE(r.records.size(), 1u);
    EXPECT_LE(r.records.size(), 4u);
    EXPECT_EQ(worker.refused() - refused_before, static_cast<int>(r.records.size()));
    for (const RequestRecord& record : r.records) {
      EXPECT_EQ(record.result.error_kind, "unauthorized");
      EXPECT_EQ(record.result.http_status, 401);
    }
    EXPECT_GT(r.not_sent.unauthorized, 0);
    EXPECT_EQ(r.planned, static_cast<int>(r.records.size()) + r.not_sent.total());
    const json summary = SummarizeRun(r, {});
    EXPECT_EQ(summary["all"]["errors"]["unauthorized"].get<int>(),
              static_cast<int>(r.records.size()));
    EXPECT_TRUE(summary["stopped_unauthorized"].get<bool>());
    EXPECT_TRUE(summary["requests"]["accounted"].get<bool>());
    if (!key.empty()) {
      EXPECT_FALSE(absl::StrContains(summary.dump(), key));
      EXPECT_FALSE(absl::StrContains(RequestsCsv(r.records), key));
    }
  }
  EXPECT_EQ(worker.accepted(), 0);
}

TEST(ApiKeyTest, TokenProbeReportsUnauthenticated) {
  KeyedWorker worker(kKey);
  auto measured = MeasureTokensPerWord(worker.endpoint(), "", "probe", kKey);
  ASSERT_TRUE(measured.ok()) << measured.status();
  EXPECT_DOUBLE_EQ(*measured, 1.0);
  EXPECT_EQ(MeasureTokensPerWord(worker.endpoint(), "", "probe").status().code(),
            absl::StatusCode::kUnauthenticated);
}

// ---- the binaries -------------------------------------------------------

constexpr char kConversations[] = R"([
  {"id": "a", "conversations": [
    {"from": "human", "value": "Tell me a story."},
    {"from": "human", "value": "And then?"}]},
  {"id": "b", "conversations": [
    {"from": "human", "value": "Tell me about a cat."},
    {"from": "human", "value": "Was it happy?"}]},
  {"id": "c", "conversations": [
    {"from": "human", "value": "Tell me about a truck."},
    {"from": "human", "value": "Where did it go?"}]},
  {"id": "d", "conversations": [
    {"from": "human", "value": "Tell me about a bear."},
    {"from": "human", "value": "Did it sleep?"}]}
])";
constexpr int kTurns = 8;

// Runs `argv` with KRUL_API_KEY and OPENAI_API_KEY unset, then `env`
// (NAME=value) set; stdout and stderr together.
CommandResult RunTool(const std::vector<std::string>& env, const std::vector<std::string>& argv) {
  std::vector<std::string> command = {"/usr/bin/env", "-u", "KRUL_API_KEY", "-u", "OPENAI_API_KEY"};
  command.insert(command.end(), env.begin(), env.end());
  command.insert(command.end(), argv.begin(), argv.end());
  auto r = RunCommand(command, "", absl::Seconds(120));
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : CommandResult{};
}

std::vector<std::string> LoadtestArgs(const KeyedWorker& worker, const std::string& trace,
                                      const std::string& out) {
  return {KRUL_LOADTEST_BIN, "--trace",         trace,         "--endpoints",
          worker.address(),  "--out",           out,           "--plots=false",
          "--progress=none", "--concurrency=2", "--settle_s=0"};
}

// Every file under `dir`, and the console output, without `key`.
void ExpectNoKey(const std::string& dir, const std::string& console, const std::string& key) {
  EXPECT_FALSE(absl::StrContains(console, key)) << console;
  int files = 0;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (!entry.is_regular_file()) continue;
    ++files;
    EXPECT_FALSE(absl::StrContains(ReadFile(entry.path()), key)) << entry.path();
  }
  EXPECT_GT(files, 0) << "nothing written under " << dir;
}

TEST(ApiKeyBinaryTest, LoadtestSendsTheKeyFromTheEnvironmentAndNeverWritesIt) {
  KeyedWorker worker(kKey);
  TempDir tmp;
  ASSERT_FALSE(tmp.path().empty());
  const std::string trace = tmp.path() + "/conversations.json";
  std::ofstream(trace) << kConversations;
  for (const char* variable : {"KRUL_API_KEY", "OPENAI_API_KEY"}) {
    SCOPED_TRACE(variable);
    const std::string out = tmp.path() + "/" + variable;
    CommandResult r =
        RunTool({absl::StrCat(variable, "=", kKey)}, LoadtestArgs(worker, trace, out));
    ASSERT_EQ(r.code, 0) << r.output;
    const json summary = json::parse(ReadFile(out + "/summary.json"));
    EXPECT_EQ(summary["requests"]["ok"].get<int>(), kTurns) << summary.dump(2);
    EXPECT_EQ(summary["run"]["api_key"], variable);
    ExpectNoKey(out, r.output, kKey);
  }
  EXPECT_EQ(worker.accepted(), 2 * kTurns);
  EXPECT_EQ(worker.refused(), 0);
}

TEST(ApiKeyBinaryTest, LoadtestStopsEarlyWithAClearMessageOn401) {
  KeyedWorker worker(kKey);
  TempDir tmp;
  ASSERT_FALSE(tmp.path().empty());
  const std::string trace = tmp.path() + "/conversations.json";
  std::ofstream(trace) << kConversations;
  {
    SCOPED_TRACE("no key");
    const std::string out = tmp.path() + "/none";
    CommandResult r = RunTool({}, LoadtestArgs(worker, trace, out));
    EXPECT_EQ(r.code, 1) << r.output;
    EXPECT_TRUE(absl::StrContains(r.output, "401")) << r.output;
    EXPECT_TRUE(absl::StrContains(r.output, "--api_key")) << r.output;
    EXPECT_TRUE(absl::StrContains(r.output, "KRUL_API_KEY")) << r.output;
    const json summary = json::parse(ReadFile(out + "/summary.json"));
    EXPECT_EQ(summary["requests"]["ok"].get<int>(), 0);
    EXPECT_GT(summary["requests"]["not_sent"]["unauthorized"].get<int>(), 0) << summary.dump(2);
    EXPECT_EQ(summary["run"]["api_key"], "none");
  }
  const int refused_before = worker.refused();
  {
    SCOPED_TRACE("wrong key on the command line");
    const std::string out = tmp.path() + "/wrong";
    std::vector<std::string> args = LoadtestArgs(worker, trace, out);
    args.push_back(absl::StrCat("--api_key=", kWrongKey));
    CommandResult r = RunTool({}, args);
    EXPECT_EQ(r.code, 1) << r.output;
    EXPECT_TRUE(absl::StrContains(r.output, "refused the API key from --api_key")) << r.output;
    ExpectNoKey(out, r.output, kWrongKey);
  }
  // Two senders: at most the two requests in flight at the first 401.
  EXPECT_LE(worker.refused() - refused_before, 2);
  EXPECT_EQ(worker.accepted(), 0);
}

TEST(ApiKeyBinaryTest, ReplaySendsTheKeyAndStopsAtTheFirst401) {
  KeyedWorker worker(kKey);
  TempDir tmp;
  ASSERT_FALSE(tmp.path().empty());
  const std::string trace = tmp.path() + "/conversations.json";
  std::ofstream(trace) << kConversations;
  const std::string json_out = tmp.path() + "/replay.json";
  const std::vector<std::string> args = {KRUL_REPLAY_BIN,   "--workers",  worker.address(),
                                         "--conversations", trace,        "--modes=recompute",
                                         "--think_ms=0",    "--json_out", json_out};
  CommandResult ok = RunTool({absl::StrCat("KRUL_API_KEY=", kKey)}, args);
  EXPECT_EQ(ok.code, 0) << ok.output;
  EXPECT_EQ(worker.accepted(), kTurns);
  ExpectNoKey(tmp.path(), ok.output, kKey);

  std::vector<std::string> wrong = args;
  wrong.push_back(absl::StrCat("--api_key=", kWrongKey));
  CommandResult refused = RunTool({}, wrong);
  EXPECT_EQ(refused.code, 1) << refused.output;
  EXPECT_TRUE(absl::StrContains(refused.output, "401")) << refused.output;
  EXPECT_TRUE(absl::StrContains(refused.output, "refused the API key")) << refused.output;
  EXPECT_FALSE(absl::StrContains(refused.output, kWrongKey)) << refused.output;
  EXPECT_EQ(worker.refused(), 1);
}

}  // namespace
}  // namespace krul::loadtest
