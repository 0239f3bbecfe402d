// krul-worker's API keys and tenants, as processes on loopback ports (and
// krul-kvstore with its own tokens when it is built): /v1 needs a key from
// the hashed --api_keys_file (401 invalid_api_key otherwise; probes and
// metrics need none), a tenant naming another's conversation id reaches a
// conversation of its own (no invalidation, no existence probe), and the
// worker refuses to serve keyless HTTP off loopback; its gRPC service takes
// the same keys.
#include <grpcpp/grpcpp.h>
#include <httplib.h>
#include <sys/wait.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/chat_client.h"
#include "gtest/gtest.h"
#include "krul/rpc/bearer_token.h"
#include "krul/v1/worker.grpc.pb.h"
#include "services/worker/worker_test_util.h"
#include "test_support/child_process.h"
#include "test_support/shell.h"
#include "test_support/test_data.h"
#include "test_support/wait.h"

namespace krul::worker {
namespace {

using krul::testing::ChildProcess;
using krul::testing::PortFromLine;
using krul::testing::WaitFor;
using nlohmann::json;

constexpr char kModelName[] = "krul-test";
constexpr char kAliceKey[] = "sk-alice-5f0c2b9e1d7a4c3b";
constexpr char kBobKey[] = "sk-bob-8e1f6a2d4c9b7e30aa";
constexpr char kWorkerToken[] = "worker-service-token-3a7c9e1f";

std::string KeyLine(const std::string& tenant, const std::string& key) {
  return absl::StrCat(tenant, ":", rpc::Sha256Hex(key), "\n");
}

// The model flags of worker_integration_test.cc: krul12L when the shared
// data is there, else the synthetic shape.
std::vector<std::string> ModelFlags() {
  WorkerOptions o = testing::TestModelOptions();
  if (o.synthetic) return {"--synthetic", "--synthetic_shape=64,172,6,8,4,512,256"};
  return {"--model=" + o.model_path, "--tokenizer=" + o.tokenizer_path};
}

// Runs krul-worker with `args` to completion (bounded): exit code, output.
std::pair<int, std::string> RunWorker(const std::string& args) {
  const krul::testing::ShellResult r = krul::testing::RunShell(
      std::string("timeout --signal=KILL 60 ") + KRUL_WORKER_BIN + " " + args);
  return {r.exit_code, r.output};
}

json Request(const json& messages, const std::string& conversation_id) {
  return json{{"model", kModelName},
              {"messages", messages},
              {"max_tokens", 8},
              {"temperature", 0},
              {"conversation_id", conversation_id}};
}

ChatClient::Headers Bearer(const std::string& key) {
  return {{"Authorization", absl::StrCat("Bearer ", key)}};
}

class WorkerTenantTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = krul::testing::ScratchDir();
    keys_file_ = dir_ + "/api_keys";
    krul::testing::WriteFileOrDie(
        keys_file_, "# worker API keys\n" + KeyLine("alice", kAliceKey) + KeyLine("bob", kBobKey));
  }

  void TearDown() override {
    client_.reset();
    if (worker_) {
      EXPECT_EQ(worker_->Terminate(), 0);
    }
    if (kvstore_) kvstore_->Terminate();
  }

  // A kvstore that authenticates its callers: the worker holds one service
  // token, the kvstore tenant "workers".
  void StartKvstore() {
#ifdef KRUL_KVSTORE_BIN
    krul::testing::WriteFileOrDie(dir_ + "/kv_tokens", KeyLine("workers", kWorkerToken));
    krul::testing::WriteFileOrDie(dir_ + "/worker_token", kWorkerToken);
    auto kv = ChildProcess::Start(
        {KRUL_KVSTORE_BIN, "--host=127.0.0.1", "--port=0", "--metrics_port=-1",
         "--rocksdb_path=" + dir_ + "/kv", "--tenant_tokens_file=" + dir_ + "/kv_tokens"},
        "krul-kvstore listening on");
    ASSERT_TRUE(kv.ok()) << kv.status();
    kvstore_ = *std::move(kv);
#else
    GTEST_SKIP() << "krul-kvstore is not built";
#endif
  }

  void StartWorker(bool with_kvstore, bool with_grpc = false) {
    std::vector<std::string> argv = {KRUL_WORKER_BIN,
                                     "--host=127.0.0.1",
                                     "--http_port=0",
                                     "--threads=1",
                                     "--probe_compute=false",
                                     "--probe_load=false",
                                     "--freeze_costs",
                                     std::string("--model_name=") + kModelName,
                                     "--api_keys_file=" + keys_file_};
    for (const std::string& f : ModelFlags()) argv.push_back(f);
    if (with_kvstore) {
      argv.push_back("--kvstore=127.0.0.1:" + std::to_string(PortFromLine(kvstore_->ready_line())));
      argv.push_back("--tenant=workers");
      argv.push_back("--kvstore_token_file=" + dir_ + "/worker_token");
    }
    if (with_grpc) argv.push_back("--grpc_port=0");
    auto process = ChildProcess::Start(argv, "krul-worker listening on");
    ASSERT_TRUE(process.ok()) << process.status();
    worker_ = *std::move(process);
    port_ = PortFromLine(worker_->ready_line());
    ASSERT_GT(port_, 0) << worker_->ready_line();
    if (with_grpc) {
      auto line = worker_->WaitForLine("grpc listening on");
      ASSERT_TRUE(line.ok()) << line.status();
      grpc_port_ = PortFromLine(*line);
      ASSERT_GT(grpc_port_, 0) << *line;
    }
    client_ = std::make_unique<ChatClient>("127.0.0.1", port_);
  }

  std::string Metrics() { return client_->Get("/metrics").second; }

  // The reply went out before its persist: the next turn may count on the
  // store only once the worker has finished `n` persists.
  void WaitForPersists(int n) {
    std::string m;
    ASSERT_TRUE(WaitFor(
        [&] {
          m = Metrics();
          return MetricValue(m, "krul_worker_persists_total", "result=\"ok\"") +
                     MetricValue(m, "krul_worker_persists_total", "result=\"error\"") >=
                 n;
        },
        absl::Seconds(60), "persists to reach " + std::to_string(n)));
    EXPECT_EQ(MetricValue(m, "krul_worker_persists_total", "result=\"ok\""), n) << m;
  }

  // Alice starts conversation "conv-7"; bob names the same id (other
  // messages), then an id nobody used; alice continues "conv-7".
  void ExpectNoCrossTenantEffect() {
    json alice = json::array({{{"role", "user"}, {"content", "Tell me about a dog named Max."}}});
    ChatReply first = client_->Chat(Request(alice, "conv-7"), Bearer(kAliceKey));
    ASSERT_EQ(first.http_status, 200) << first.error;
    EXPECT_EQ(first.body["krul"]["restore"], "miss");
    WaitForPersists(1);

    const json bob = json::array({{{"role", "user"}, {"content", "Once there was a cat."}}});
    ChatReply probe = client_->Chat(Request(bob, "conv-7"), Bearer(kBobKey));
    ASSERT_EQ(probe.http_status, 200) << probe.error;
    WaitForPersists(2);
    ChatReply unused = client_->Chat(Request(bob, "conv-never-used"), Bearer(kBobKey));
    ASSERT_EQ(unused.http_status, 200) << unused.error;
    WaitForPersists(3);
    // Bob sees exactly what an unused id gives: no "mismatch" to learn from.
    EXPECT_EQ(probe.body["krul"]["restore"], "miss") << probe.body.dump();
    EXPECT_TRUE(probe.body["krul"]["fallback_reason"].is_null()) << probe.body.dump();
    EXPECT_EQ(probe.body["krul"]["restore"], unused.body["krul"]["restore"]);
    EXPECT_EQ(probe.body["krul"]["fallback_reason"], unused.body["krul"]["fallback_reason"]);
    EXPECT_EQ(probe.body["krul"]["conversation_id"], "conv-7");

    // Alice's cache is untouched: her next turn restores it.
    alice.push_back({{"role", "assistant"}, {"content", first.content}});
    alice.push_back({{"role", "user"}, {"content", "What did Max do next?"}});
    ChatReply second = client_->Chat(Request(alice, "conv-7"), Bearer(kAliceKey));
    ASSERT_EQ(second.http_status, 200) << second.error;
    EXPECT_EQ(second.body["krul"]["restore"], "hit") << second.body.dump();

    // /metrics (unauthenticated) names neither tenants nor conversations.
    const std::string m = Metrics();
    EXPECT_EQ(MetricValue(m, "krul_worker_fallbacks_total", "reason=\"mismatch\""), 0) << m;
    for (const char* secret : {"alice", "bob", "conv-7", "conv-never-used", kAliceKey, kBobKey}) {
      EXPECT_EQ(m.find(secret), std::string::npos) << secret;
    }
  }

  std::string dir_, keys_file_;
  std::unique_ptr<ChildProcess> kvstore_, worker_;
  int port_ = 0;
  int grpc_port_ = 0;
  std::unique_ptr<ChatClient> client_;
};

TEST_F(WorkerTenantTest, NoKeyOrAWrongKeyIs401AndProbesNeedNone) {
  ASSERT_NO_FATAL_FAILURE(StartWorker(false));
  httplib::Client http("127.0.0.1", port_);
  http.set_read_timeout(60, 0);
  const std::string body =
      Request(json::array({{{"role", "user"}, {"content", "Hi"}}}), "conv-1").dump();
  const std::vector<httplib::Headers> refused = {
      {},
      {{"Authorization", "Bearer sk-mallory-0000000000000000"}},
      {{"Authorization", absl::StrCat("Basic ", kAliceKey)}},
      {{"Authorization", absl::StrCat("Bearer ", rpc::Sha256Hex(kAliceKey))}},  // the hash
  };
  for (const httplib::Headers& headers : refused) {
    auto res = http.Post("/v1/chat/completions", headers, body, "application/json");
    ASSERT_TRUE(res) << httplib::to_string(res.error());
    EXPECT_EQ(res->status, 401) << res->body;
    const json error = json::parse(res->body, nullptr, false);
    ASSERT_TRUE(error.contains("error")) << res->body;
    EXPECT_EQ(error["error"]["code"], "invalid_api_key") << res->body;
    EXPECT_EQ(error["error"]["type"], "invalid_request_error") << res->body;
    EXPECT_EQ(res->get_header_value("WWW-Authenticate"), "Bearer");
    EXPECT_EQ(res->body.find("mallory"), std::string::npos);
    auto models = http.Get("/v1/models", headers);
    ASSERT_TRUE(models);
    EXPECT_EQ(models->status, 401) << models->body;
  }
  auto models = http.Get("/v1/models", {{"Authorization", absl::StrCat("Bearer ", kBobKey)}});
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 200);
  EXPECT_EQ(json::parse(models->body)["data"][0]["id"], kModelName);
  for (const char* path : {"/healthz", "/readyz", "/metrics"}) {
    auto res = http.Get(path);
    ASSERT_TRUE(res) << path;
    EXPECT_EQ(res->status, 200) << path;
  }
  ChatReply ok = client_->Chat(json::parse(body), Bearer(kAliceKey));
  EXPECT_EQ(ok.http_status, 200) << ok.error;
  EXPECT_EQ(MetricValue(Metrics(), "krul_worker_requests_total", "code=\"401\""),
            2 * static_cast<double>(refused.size()));
}

TEST_F(WorkerTenantTest, AnotherTenantsConversationIdIsAnotherConversation) {
  ASSERT_NO_FATAL_FAILURE(StartWorker(false));
  ExpectNoCrossTenantEffect();
}

TEST_F(WorkerTenantTest, AnotherTenantsConversationIdIsAnotherConversationInTheKvstore) {
  ASSERT_NO_FATAL_FAILURE(StartKvstore());
  if (IsSkipped()) return;
  ASSERT_NO_FATAL_FAILURE(StartWorker(true));
  ExpectNoCrossTenantEffect();
}

// A gRPC stub whose calls carry `key` (none when empty).
std::unique_ptr<v1::Worker::Stub> GrpcStub(int port, const std::string& key) {
  return v1::Worker::NewStub(rpc::CreateChannelWithToken("127.0.0.1:" + std::to_string(port),
                                                         grpc::InsecureChannelCredentials(),
                                                         grpc::ChannelArguments(), key));
}

grpc::Status GrpcChat(v1::Worker::Stub& stub, const std::vector<std::pair<int, std::string>>& msgs,
                      const std::string& conversation_id, v1::ChatResponse* response) {
  v1::ChatRequest request;
  request.set_model(kModelName);
  request.set_max_tokens(8);
  request.set_temperature(0);
  request.set_conversation_id(conversation_id);
  for (const auto& [role, content] : msgs) {
    v1::ChatMessage* m = request.add_messages();
    m->set_role(static_cast<v1::ChatRole>(role));
    m->set_content(content);
  }
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  return stub.Chat(&context, request, response);
}

TEST_F(WorkerTenantTest, TheGrpcServiceNeedsAKeyAndKeepsTheKeysTenant) {
  ASSERT_NO_FATAL_FAILURE(StartWorker(false, true));
  const std::vector<std::pair<int, std::string>> hi = {{v1::CHAT_ROLE_USER, "Hi"}};
  for (const std::string& key : {std::string(), std::string("sk-mallory-0000000000000000")}) {
    v1::ChatResponse response;
    EXPECT_EQ(GrpcChat(*GrpcStub(grpc_port_, key), hi, "conv-g", &response).error_code(),
              grpc::StatusCode::UNAUTHENTICATED)
        << key;
    grpc::ClientContext context;
    v1::ModelsResponse models;
    EXPECT_EQ(
        GrpcStub(grpc_port_, key)->Models(&context, v1::ModelsRequest(), &models).error_code(),
        grpc::StatusCode::UNAUTHENTICATED);
  }
  // Alice starts over HTTP; bob names her id over gRPC: his own namespace.
  json alice = json::array({{{"role", "user"}, {"content", "Tell me about a dog named Max."}}});
  ChatReply first = client_->Chat(Request(alice, "conv-g"), Bearer(kAliceKey));
  ASSERT_EQ(first.http_status, 200) << first.error;
  WaitForPersists(1);
  v1::ChatResponse bob;
  grpc::Status s = GrpcChat(*GrpcStub(grpc_port_, kBobKey),
                            {{v1::CHAT_ROLE_USER, "Once there was a cat."}}, "conv-g", &bob);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(bob.stats().restore(), "miss");
  EXPECT_EQ(bob.stats().fallback_reason(), "");
  WaitForPersists(2);
  // Alice continues over gRPC: the same tenant, the same conversation.
  v1::ChatResponse second;
  s = GrpcChat(*GrpcStub(grpc_port_, kAliceKey),
               {{v1::CHAT_ROLE_USER, "Tell me about a dog named Max."},
                {v1::CHAT_ROLE_ASSISTANT, first.content},
                {v1::CHAT_ROLE_USER, "What did Max do next?"}},
               "conv-g", &second);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(second.stats().restore(), "hit") << second.stats().fallback_reason();
}

TEST(WorkerTenantFlagsTest, KeylessHttpOffLoopbackAndBadKeyFilesAreRefused) {
  auto [code, out] = RunWorker(
      "--synthetic --host=0.0.0.0 --http_port=0 --probe_load=false --probe_compute=false");
  EXPECT_EQ(code, 1) << out;
  EXPECT_NE(out.find("--api_keys_file"), std::string::npos) << out;
  EXPECT_NE(out.find("--insecure_http"), std::string::npos) << out;
  EXPECT_EQ(out.find("listening on"), std::string::npos) << out;

  const std::string dir = krul::testing::ScratchDir();
  krul::testing::WriteFileOrDie(dir + "/clear", absl::StrCat("alice:", kAliceKey, "\n"));
  auto [clear_code, clear_out] = RunWorker(
      "--synthetic --http_port=0 --probe_load=false "
      "--probe_compute=false --api_keys_file=" +
      dir + "/clear");
  EXPECT_EQ(clear_code, 1) << clear_out;
  EXPECT_NE(clear_out.find("api_keys_file"), std::string::npos) << clear_out;
  EXPECT_NE(clear_out.find("hash"), std::string::npos) << clear_out;
  EXPECT_EQ(clear_out.find(kAliceKey), std::string::npos) << "the key was echoed";
  EXPECT_EQ(clear_out.find("listening on"), std::string::npos) << clear_out;
}

}  // namespace
}  // namespace krul::worker
