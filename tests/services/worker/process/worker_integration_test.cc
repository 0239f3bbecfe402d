// krul-worker (and krul-kvstore, when built) as real processes on loopback
// ports, driven over the public HTTP API (and gRPC): conversations that
// cross workers, loads from the store, the store dying mid-conversation,
// streaming vs non-streaming, bad requests, a full queue, and the request
// shapes the OpenAI SDKs send.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <fstream>
#include <sstream>
#include <thread>

#include "client/chat_client.h"
#include "gtest/gtest.h"
#include "krul/model/model.h"
#include "krul/model/tokenizer.h"
#include "krul/v1/worker.grpc.pb.h"
#include "services/worker/worker_test_util.h"
#include "test_support/child_process.h"
#include "test_support/test_data.h"
#include "test_support/wait.h"

namespace krul::worker {
namespace {

using krul::testing::ChildProcess;
using krul::testing::PortFromLine;
using krul::testing::WaitFor;
using nlohmann::json;

constexpr char kModelName[] = "krul-test";
const std::vector<std::string> kUserTurns = {
    "Tell me a story about a little dog named Max.",
    "What did Max do with the ball?",
    "How did the story end?",
};

bool HaveKvstore() {
#ifdef KRUL_KVSTORE_BIN
  return true;
#else
  return false;
#endif
}

// The model flags: real krul12L when the shared data is there, else the
// synthetic shape worker_test_util.h uses (same seed, same weights).
std::vector<std::string> ModelFlags() {
  WorkerOptions o = testing::TestModelOptions();
  if (o.synthetic) return {"--synthetic", "--synthetic_shape=64,172,6,8,4,512,256"};
  return {"--model=" + o.model_path, "--tokenizer=" + o.tokenizer_path};
}

struct Worker {
  std::unique_ptr<ChildProcess> process;
  int port = 0;
  int grpc_port = 0;
  std::unique_ptr<ChatClient> client;
  std::string Metrics() { return client->Get("/metrics").second; }
};

// Waits until `w` has finished `n` background persists (a turn's KV is in
// the kvstore once its persist counts as ok), then expects all of them to
// have succeeded. Replies go out before the persist, so the next turn may
// only count on the store once this holds.
void WaitForPersists(Worker& w, int n) {
  std::string m;
  auto finished = [&] {
    m = w.Metrics();
    return MetricValue(m, "krul_worker_persists_total", "result=\"ok\"") +
               MetricValue(m, "krul_worker_persists_total", "result=\"error\"") >=
           n;
  };
  ASSERT_TRUE(WaitFor(finished, absl::Seconds(60),
                      "krul_worker_persists_total{ok+error} to reach " + std::to_string(n)))
      << m;
  EXPECT_EQ(MetricValue(m, "krul_worker_persists_total", "result=\"ok\""), n) << m;
}

// Starts krul-worker with the common test flags plus `extra`. Costs are
// fixed (no probe, no live refresh) so the restore split is the same on
// every machine: a load request costs more than recomputing a short layer,
// so restores recompute the first layers and load the rest.
absl::StatusOr<Worker> StartWorker(const std::string& kvstore,
                                   const std::vector<std::string>& extra = {}) {
  std::vector<std::string> argv = {
      KRUL_WORKER_BIN,  "--host=127.0.0.1",       "--http_port=0",
      "--threads=1",    "--probe_compute=false",  "--probe_load=false",
      "--freeze_costs", "--load_latency_us=1000", std::string("--model_name=") + kModelName};
  for (const std::string& f : ModelFlags()) argv.push_back(f);
  if (!kvstore.empty()) argv.push_back("--kvstore=" + kvstore);
  for (const std::string& f : extra) argv.push_back(f);
  auto process = ChildProcess::Start(argv, "krul-worker listening on");
  if (!process.ok()) return process.status();
  Worker w;
  w.port = PortFromLine((*process)->ready_line());
  if (w.port <= 0) return absl::InternalError("no port in: " + (*process)->ready_line());
  for (const std::string& f : extra) {
    if (f.rfind("--grpc_port", 0) == 0) {
      auto line = (*process)->WaitForLine("grpc listening on");
      if (!line.ok()) return line.status();
      w.grpc_port = PortFromLine(*line);
    }
  }
  w.process = *std::move(process);
  w.client = std::make_unique<ChatClient>("127.0.0.1", w.port);
  return w;
}

// `extra` flags go after the defaults (a later --metrics_port wins).
absl::StatusOr<std::unique_ptr<ChildProcess>> StartKvstore(
    const std::vector<std::string>& extra = {}) {
#ifdef KRUL_KVSTORE_BIN
  std::vector<std::string> argv = {KRUL_KVSTORE_BIN, "--host=127.0.0.1", "--port=0",
                                   "--metrics_port=-1",
                                   "--rocksdb_path=" + krul::testing::ScratchDir() + "/kv"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return ChildProcess::Start(argv, "krul-kvstore listening on");
#else
  (void)extra;
  return absl::UnavailableError("krul-kvstore is not built");
#endif
}

// The kvstore's /metrics port from its ready line ("... metrics_port N ...").
int MetricsPortFromLine(const std::string& line) {
  const size_t at = line.find("metrics_port ");
  return at == std::string::npos ? 0 : std::atoi(line.c_str() + at + 13);
}

json Request(const json& messages, int max_tokens, bool stream = false) {
  return json{{"model", kModelName}, {"messages", messages}, {"max_tokens", max_tokens},
              {"temperature", 0},    {"stream", stream},     {"return_token_ids", true}};
}

std::vector<int> TokenIds(const ChatReply& r) {
  if (!r.body.contains("krul") || !r.body["krul"].contains("completion_token_ids")) return {};
  return r.body["krul"]["completion_token_ids"].get<std::vector<int>>();
}

// A cluster: one kvstore and two workers sharing it.
class ClusterTest : public ::testing::Test {
 protected:
  void StartCluster(const std::vector<std::string>& worker_flags,
                    const std::vector<std::string>& kvstore_flags = {}) {
    if (!HaveKvstore()) GTEST_SKIP() << "krul-kvstore is not built";
    auto kv = StartKvstore(kvstore_flags);
    ASSERT_TRUE(kv.ok()) << kv.status();
    kvstore_ = *std::move(kv);
    const std::string address = "127.0.0.1:" + std::to_string(PortFromLine(kvstore_->ready_line()));
    for (Worker* w : {&a_, &b_}) {
      auto started = StartWorker(address, worker_flags);
      ASSERT_TRUE(started.ok()) << started.status();
      *w = *std::move(started);
    }
  }

  void TearDown() override {
    // A clean shutdown is part of the contract: SIGTERM -> exit 0.
    for (Worker* w : {&a_, &b_}) {
      w->client.reset();  // close the keep-alive connection first
      if (w->process) {
        EXPECT_EQ(w->process->Terminate(), 0);
      }
    }
    if (kvstore_) kvstore_->Terminate();
  }

  std::unique_ptr<ChildProcess> kvstore_;
  Worker a_, b_;
};

TEST_F(ClusterTest, ThreeTurnsThroughTwoWorkersEqualOneUninterruptedRun) {
  StartCluster({"--mode=krul", "--target_ratio=1"});
  // The reference keeps one KV cache for the whole conversation.
  WorkerOptions o = testing::TestModelOptions();
  auto model = o.synthetic ? MakeSyntheticModel(o.synthetic_shape, o.synthetic_seed)
                           : LoadModel(o.model_path);
  ASSERT_TRUE(model.ok());
  auto tokenizer = o.synthetic ? Tokenizer::FromVocabulary(*(*model)->vocabulary())
                               : Tokenizer::FromLlama2cFile(o.tokenizer_path);
  ASSERT_TRUE(tokenizer.ok());
  testing::ReferenceConversation reference(**model, *tokenizer);

  json messages = json::array();
  Worker* route[] = {&a_, &b_, &a_};
  int persisted[] = {1, 1, 2};  // by the turn's worker, once the turn is stored
  double recomputed = 0, loaded = 0;
  for (size_t turn = 0; turn < kUserTurns.size(); ++turn) {
    messages.push_back({{"role", "user"}, {"content", kUserTurns[turn]}});
    ChatReply reply = route[turn]->client->Chat(Request(messages, 24));
    ASSERT_EQ(reply.http_status, 200) << reply.error;
    EXPECT_EQ(TokenIds(reply), reference.Turn(kUserTurns[turn], 24)) << "turn " << turn + 1;
    const json& k = reply.body["krul"];
    if (turn > 0) {
      EXPECT_EQ(k["restore"], "hit") << k.dump();
      recomputed += k["recomputed_tokens"].get<double>();
      loaded += k["loaded_tokens"].get<double>();
    }
    messages.push_back({{"role", "assistant"}, {"content", reply.content}});
    ASSERT_NO_FATAL_FAILURE(WaitForPersists(*route[turn], persisted[turn])) << "turn " << turn + 1;
  }
  // Both halves of the restore ran: some history recomputed, some loaded.
  EXPECT_GT(recomputed, 0);
  EXPECT_GT(loaded, 0);
}

TEST_F(ClusterTest, WithSharingTurnTwoLoadsFromTheKvstore) {
  StartCluster({"--mode=krul", "--target_ratio=1.5"});
  json messages = json::array({{{"role", "user"}, {"content", kUserTurns[0]}}});
  ChatReply first = a_.client->Chat(Request(messages, 40));
  ASSERT_EQ(first.http_status, 200) << first.error;
  messages.push_back({{"role", "assistant"}, {"content", first.content}});
  messages.push_back({{"role", "user"}, {"content", kUserTurns[1]}});
  ASSERT_NO_FATAL_FAILURE(WaitForPersists(a_, 1));
  ChatReply second = b_.client->Chat(Request(messages, 8));
  ASSERT_EQ(second.http_status, 200) << second.error;
  EXPECT_EQ(second.body["krul"]["restore"], "hit");

  const std::string m = b_.Metrics();
  const double loaded_bytes = MetricValue(m, "krul_worker_loaded_bytes_total");
  const double recomputed = MetricValue(m, "krul_worker_recomputed_tokens_total");
  const double history = MetricValue(m, "krul_worker_restored_tokens_total");
  EXPECT_GT(loaded_bytes, 0) << m;
  EXPECT_GT(recomputed, 0) << m;
  EXPECT_LT(recomputed, history) << m;
  EXPECT_EQ(MetricValue(m, "krul_worker_restores_total", "result=\"hit\""), 1);
  // Worker A persisted a compressed turn: fewer bytes than the fp32 KV.
  const std::string ma = a_.Metrics();
  EXPECT_GT(MetricValue(ma, "krul_worker_kv_compression_ratio_sum"), 1.0) << ma;
}

// Two turns through two workers (A, B) with the worker's default data
// plane against a kvstore started with `kvstore_flags` (--metrics_port=0
// added); B restores turn 2 by loading everything (mode load). Returns the
// kvstore's /metrics after the restore.
std::string LoadModeRestore(Worker& a, Worker& b, ChildProcess& kvstore) {
  WorkerOptions o = testing::TestModelOptions();
  auto model = o.synthetic ? MakeSyntheticModel(o.synthetic_shape, o.synthetic_seed)
                           : LoadModel(o.model_path);
  EXPECT_TRUE(model.ok());
  if (!model.ok()) return "";
  auto tokenizer = o.synthetic ? Tokenizer::FromVocabulary(*(*model)->vocabulary())
                               : Tokenizer::FromLlama2cFile(o.tokenizer_path);
  EXPECT_TRUE(tokenizer.ok());
  if (!tokenizer.ok()) return "";
  testing::ReferenceConversation reference(**model, *tokenizer);
  json messages = json::array({{{"role", "user"}, {"content", kUserTurns[0]}}});
  ChatReply first = a.client->Chat(Request(messages, 16));
  EXPECT_EQ(first.http_status, 200) << first.error;
  EXPECT_EQ(TokenIds(first), reference.Turn(kUserTurns[0], 16));
  messages.push_back({{"role", "assistant"}, {"content", first.content}});
  messages.push_back({{"role", "user"}, {"content", kUserTurns[1]}});
  WaitForPersists(a, 1);
  ChatReply second = b.client->Chat(Request(messages, 16));
  EXPECT_EQ(second.http_status, 200) << second.error;
  EXPECT_EQ(second.body["krul"]["restore"], "hit") << second.body.dump();
  EXPECT_GT(second.body["krul"]["loaded_bytes"].get<double>(), 0);
  EXPECT_EQ(TokenIds(second), reference.Turn(kUserTurns[1], 16));
  ChatClient metrics("127.0.0.1", MetricsPortFromLine(kvstore.ready_line()));
  auto [status, body] = metrics.Get("/metrics");
  EXPECT_EQ(status, 200);
  return body;
}

TEST_F(ClusterTest, WorkersMoveKvOverUcxByDefault) {
  StartCluster({"--mode=load"}, {"--ucx", "--metrics_port=0"});
  const std::string m = LoadModeRestore(a_, b_, *kvstore_);
  // The restore's blocks left the store over UCX (shared memory here).
  EXPECT_GT(MetricValue(m, "krul_kvstore_transfer_bytes_total", "dir=\"out\",transport=\"ucx\""), 0)
      << m;
  EXPECT_EQ(MetricValue(m, "krul_kvstore_transfer_bytes_total", "dir=\"out\",transport=\"grpc\""),
            0)
      << m;
}

TEST_F(ClusterTest, WorkersFallBackToInlineGrpcWhenTheKvstoreHasNoUcx) {
  StartCluster({"--mode=load"}, {"--metrics_port=0"});
  const std::string m = LoadModeRestore(a_, b_, *kvstore_);
  EXPECT_GT(MetricValue(m, "krul_kvstore_transfer_bytes_total", "dir=\"out\",transport=\"grpc\""),
            0)
      << m;
  EXPECT_EQ(MetricValue(m, "krul_kvstore_transfer_bytes_total", "dir=\"out\",transport=\"ucx\""), 0)
      << m;
}

TEST_F(ClusterTest, KillingTheKvstoreFallsBackToRecompute) {
  StartCluster({"--mode=load", "--kvstore_deadline=500ms"});
  json messages = json::array({{{"role", "user"}, {"content", kUserTurns[0]}}});
  ChatReply first = a_.client->Chat(Request(messages, 16));
  ASSERT_EQ(first.http_status, 200) << first.error;
  messages.push_back({{"role", "assistant"}, {"content", first.content}});
  messages.push_back({{"role", "user"}, {"content", kUserTurns[1]}});
  ASSERT_NO_FATAL_FAILURE(WaitForPersists(a_, 1));
  kvstore_->Kill();
  kvstore_.reset();

  ChatReply second = b_.client->Chat(Request(messages, 16));
  ASSERT_EQ(second.http_status, 200) << second.error;
  EXPECT_FALSE(second.content.empty());
  const json& k = second.body["krul"];
  EXPECT_EQ(k["restore"], "fallback") << k.dump();
  const std::string reason =
      k["fallback_reason"].is_string() ? k["fallback_reason"].get<std::string>() : "";
  EXPECT_TRUE(reason == "store_unavailable" || reason == "deadline") << reason;
  EXPECT_EQ(k["restored_tokens"], 0);
  const std::string m = b_.Metrics();
  EXPECT_EQ(MetricValue(m, "krul_worker_fallbacks_total", "reason=\"" + reason + "\""), 1) << m;
  // The worker keeps answering while the store is gone.
  messages.push_back({{"role", "assistant"}, {"content", second.content}});
  messages.push_back({{"role", "user"}, {"content", kUserTurns[2]}});
  ChatReply third = a_.client->Chat(Request(messages, 8));
  EXPECT_EQ(third.http_status, 200) << third.error;
}

TEST(WorkerProcessTest, StreamingAndNonStreamingAnswersAgree) {
  auto w = StartWorker("");
  ASSERT_TRUE(w.ok()) << w.status();
  const json messages = json::array({{{"role", "user"}, {"content", kUserTurns[0]}}});
  ChatReply plain = w->client->Chat(Request(messages, 20, false));
  json streamed_request = Request(messages, 20, true);
  streamed_request["stream_options"] = {{"include_usage", true}};
  ChatReply streamed = w->client->Chat(streamed_request);
  ASSERT_EQ(plain.http_status, 200) << plain.error;
  ASSERT_EQ(streamed.http_status, 200) << streamed.error;
  EXPECT_FALSE(plain.content.empty());
  EXPECT_EQ(streamed.content, plain.content);
  EXPECT_EQ(streamed.finish_reason, plain.finish_reason);
  EXPECT_EQ(TokenIds(streamed), TokenIds(plain));
  EXPECT_TRUE(streamed.done_marker);
  ASSERT_GE(streamed.chunks.size(), 3u);
  EXPECT_EQ(streamed.chunks.front()["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(streamed.body["usage"]["completion_tokens"], plain.body["usage"]["completion_tokens"]);
  EXPECT_EQ(streamed.body["usage"]["prompt_tokens"], plain.body["usage"]["prompt_tokens"]);
  w->client.reset();
  EXPECT_EQ(w->process->Terminate(), 0);
}

// Sends `body` and expects `status` with an error message containing `part`.
void ExpectError(ChatClient& client, const std::string& body, int status, const std::string& part) {
  SCOPED_TRACE(body);
  ChatReply r = client.PostRaw(body);
  EXPECT_EQ(r.http_status, status);
  EXPECT_NE(r.error.find(part), std::string::npos) << r.error;
  EXPECT_TRUE(r.body.contains("error")) << r.body.dump();
}

TEST(WorkerProcessTest, BadRequestsGetClearErrors) {
  auto w = StartWorker("", {"--max_tokens_limit=512", "--max_request_bytes=65536"});
  ASSERT_TRUE(w.ok()) << w.status();
  ChatClient& c = *w->client;
  ExpectError(c, "{\"messages\": [", 400, "not valid JSON");
  ExpectError(c, R"({"messages": []})", 400, "'messages' is empty");
  ExpectError(c, R"({"messages": [{"role": "wizard", "content": "hi"}]})", 400, "'wizard'");
  ExpectError(c, R"({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000})", 400,
              "max_tokens");
  ExpectError(c, R"({"messages": [{"role": "user", "content": "hi"}], "temperature": "warm"})", 400,
              "must be a number");
  std::string long_text;
  for (int i = 0; i < 600; ++i) long_text += "story ";
  ExpectError(c, json{{"messages", {{{"role", "user"}, {"content", long_text}}}}}.dump(), 400,
              "context_length_exceeded");
  ExpectError(c, R"({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 500})", 400,
              "context_length_exceeded");
  ExpectError(c, R"({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})", 404,
              "does not exist");
  ExpectError(c, std::string(70000, ' '), 413, "exceeds");
  auto [status, body] = c.Get("/v1/nothing-here");
  EXPECT_EQ(status, 404);
  // Every rejected request was counted by status.
  const std::string m = w->Metrics();
  EXPECT_GE(MetricValue(m, "krul_worker_requests_total", "code=\"400\""), 7) << m;
  EXPECT_EQ(MetricValue(m, "krul_worker_requests_total", "code=\"404\""), 1) << m;
}

TEST(WorkerProcessTest, AFullQueueGets429WithRetryAfter) {
  auto w = StartWorker("", {"--max_active=1", "--max_queue=0"});
  ASSERT_TRUE(w.ok()) << w.status();
  const int port = w->port;
  constexpr int kClients = 4;
  std::vector<ChatReply> replies(kClients);
  std::vector<std::thread> threads;
  std::atomic<int> ready{0};
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      ChatClient client("127.0.0.1", port);
      ready++;
      while (ready.load() < kClients) std::this_thread::yield();
      replies[i] =
          client.Chat(Request(json::array({{{"role", "user"}, {"content", "Once"}}}), 200));
    });
  }
  for (auto& t : threads) t.join();
  int ok = 0, busy = 0;
  for (const ChatReply& r : replies) {
    if (r.http_status == 200) ++ok;
    if (r.http_status == 429) {
      ++busy;
      EXPECT_GE(std::atoi(r.retry_after.c_str()), 1) << "Retry-After: " << r.retry_after;
      EXPECT_EQ(r.body["error"]["type"], "rate_limit_error");
      EXPECT_NE(r.error.find("busy"), std::string::npos) << r.error;
    }
  }
  EXPECT_GE(ok, 1);
  EXPECT_GE(busy, 1);
  EXPECT_EQ(ok + busy, kClients);
}

json LoadFixture(const std::string& name) {
  std::ifstream in(std::string(KRUL_WORKER_TESTDATA) + "/" + name);
  std::stringstream buffer;
  buffer << in.rdbuf();
  json j = json::parse(buffer.str(), nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << name;
  return j;
}

ChatReply SendFixture(int port, json fixture) {
  // Sent with the SDK's headers, byte for byte its JSON.
  json body = fixture["body"];
  body["model"] = kModelName;
  ChatClient::Headers headers;
  for (auto& [k, v] : fixture["headers"].items()) headers.emplace_back(k, v.get<std::string>());
  ChatClient client("127.0.0.1", port);
  if (body.value("stream", false)) return client.Chat(body, headers);
  return client.PostRaw(body.dump(), headers);
}

TEST(WorkerProcessTest, AnswersTheOpenAiSdkRequestWithTheDocumentedShape) {
  auto w = StartWorker("");
  ASSERT_TRUE(w.ok()) << w.status();
  ChatReply r = SendFixture(w->port, LoadFixture("openai_sdk_chat_request.json"));
  ASSERT_EQ(r.http_status, 200) << r.error;
  const json& b = r.body;
  ASSERT_TRUE(b["id"].is_string());
  EXPECT_EQ(b["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(b["object"], "chat.completion");
  EXPECT_TRUE(b["created"].is_number_integer());
  EXPECT_EQ(b["model"], kModelName);
  ASSERT_TRUE(b["choices"].is_array());
  ASSERT_EQ(b["choices"].size(), 1u);
  const json& choice = b["choices"][0];
  EXPECT_EQ(choice["index"], 0);
  EXPECT_EQ(choice["message"]["role"], "assistant");
  EXPECT_TRUE(choice["message"]["content"].is_string());
  EXPECT_TRUE(choice["logprobs"].is_null());
  ASSERT_TRUE(choice["finish_reason"].is_string());
  const std::string finish = choice["finish_reason"];
  EXPECT_TRUE(finish == "stop" || finish == "length") << finish;
  const json& u = b["usage"];
  ASSERT_TRUE(u["prompt_tokens"].is_number_integer());
  ASSERT_TRUE(u["completion_tokens"].is_number_integer());
  EXPECT_EQ(u["total_tokens"].get<int>(),
            u["prompt_tokens"].get<int>() + u["completion_tokens"].get<int>());
  EXPECT_LE(u["completion_tokens"].get<int>(), 16);
  EXPECT_GT(u["prompt_tokens"].get<int>(), 0);
  EXPECT_TRUE(u["ttft_ms"].is_number());
  EXPECT_TRUE(u["restore_mode"].is_string());
}

TEST(WorkerProcessTest, StreamsTheOpenAiSdkStreamingRequestWithTheDocumentedShape) {
  auto w = StartWorker("");
  ASSERT_TRUE(w.ok()) << w.status();
  ChatReply r = SendFixture(w->port, LoadFixture("openai_sdk_stream_request.json"));
  ASSERT_EQ(r.http_status, 200) << r.error;
  EXPECT_TRUE(r.done_marker);
  ASSERT_GE(r.chunks.size(), 3u);
  const std::string id = r.chunks[0]["id"];
  for (const json& chunk : r.chunks) {
    EXPECT_EQ(chunk["object"], "chat.completion.chunk");
    EXPECT_EQ(chunk["id"], id);
    EXPECT_EQ(chunk["model"], kModelName);
    EXPECT_TRUE(chunk["created"].is_number_integer());
  }
  // The usage chunk comes last, with no choices (stream_options.include_usage).
  const json& last = r.chunks.back();
  EXPECT_TRUE(last["choices"].empty());
  EXPECT_LE(last["usage"]["completion_tokens"].get<int>(), 12);
  // Every other chunk has one choice with a delta.
  for (size_t i = 0; i + 1 < r.chunks.size(); ++i) {
    ASSERT_EQ(r.chunks[i]["choices"].size(), 1u);
    EXPECT_TRUE(r.chunks[i]["choices"][0]["delta"].is_object());
  }
  EXPECT_TRUE(r.finish_reason == "stop" || r.finish_reason == "length");
}

TEST(WorkerProcessTest, ServesHealthReadinessModelsAndMetrics) {
  auto w = StartWorker("");
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->client->Get("/healthz").first, 200);
  EXPECT_EQ(w->client->Get("/readyz").first, 200);
  auto [status, body] = w->client->Get("/v1/models");
  ASSERT_EQ(status, 200);
  json models = json::parse(body);
  EXPECT_EQ(models["object"], "list");
  EXPECT_EQ(models["data"][0]["id"], kModelName);
  const std::string m = w->Metrics();
  for (const char* name :
       {"krul_worker_active_requests", "krul_worker_loaded_bytes_total",
        "krul_worker_recomputed_tokens_total", "krul_worker_estimator_seconds_total",
        "krul_worker_kv_compression_ratio", "krul_worker_scheduler_efficiency"}) {
    EXPECT_NE(m.find(std::string("# TYPE ") + name), std::string::npos) << name;
  }
}

TEST(WorkerProcessTest, GrpcChatGivesTheSameAnswerAsHttp) {
  auto w = StartWorker("", {"--grpc_port=0"});
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_GT(w->grpc_port, 0);
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(w->grpc_port),
                                     grpc::InsecureChannelCredentials());
  auto stub = v1::Worker::NewStub(channel);
  v1::ChatRequest request;
  auto* m = request.add_messages();
  m->set_role(v1::CHAT_ROLE_USER);
  m->set_content(kUserTurns[0]);
  request.set_max_tokens(16);
  request.set_temperature(0);
  v1::ChatResponse response;
  grpc::ClientContext context;
  ASSERT_TRUE(stub->Chat(&context, request, &response).ok());
  ChatReply http =
      w->client->Chat(Request(json::array({{{"role", "user"}, {"content", kUserTurns[0]}}}), 16));
  ASSERT_EQ(http.http_status, 200);
  EXPECT_EQ(response.content(), http.content);
  EXPECT_EQ(std::vector<int>(response.token_ids().begin(), response.token_ids().end()),
            TokenIds(http));
  // Streaming over gRPC: the deltas add up to the same answer.
  grpc::ClientContext stream_context;
  auto reader = stub->ChatStream(&stream_context, request);
  v1::ChatChunk chunk;
  std::string text;
  std::string finish;
  while (reader->Read(&chunk)) {
    text += chunk.delta();
    if (!chunk.finish_reason().empty()) finish = chunk.finish_reason();
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(text, http.content);
  EXPECT_EQ(finish, http.finish_reason);
  // Validation maps to INVALID_ARGUMENT.
  v1::ChatRequest empty;
  grpc::ClientContext bad_context;
  EXPECT_EQ(stub->Chat(&bad_context, empty, &response).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

}  // namespace
}  // namespace krul::worker
