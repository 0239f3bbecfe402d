// Across a real link: deploy/local/testbed.sh makes a storage and a compute
// network namespace joined by a rate-shaped veth pair; krul-kvstore runs in
// the storage namespace, two krul-worker processes in the compute namespace,
// and KV crosses the link over UCX (TCP on the veth). A conversation's turns
// alternate between the workers, so every restore loads its history from
// the storage node; each turn must equal the uninterrupted run token for
// token, in mode load (everything loaded) and krul with sharing off (part
// recomputed, part loaded). The test's HTTP client runs in a thread that
// joined the compute namespace (setns), as a client on that node would.
//
// Skipped, with the reason, where namespaces cannot be made (not root, no
// veth or tc). Each test makes its own testbed under a name unique to the
// process and removes it in teardown (the workers and the kvstore are
// stopped first; `testbed.sh down` also kills anything left inside).
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/chat_client.h"
#include "gtest/gtest.h"
#include "krul/model/model.h"
#include "krul/model/tokenizer.h"
#include "services/worker/worker_test_util.h"
#include "test_support/child_process.h"
#include "test_support/shell.h"
#include "test_support/wait.h"

namespace krul::worker {
namespace {

using krul::testing::ChildProcess;
using krul::testing::PortFromLine;
using krul::testing::WaitFor;
using nlohmann::json;

const std::vector<std::string> kUserTurns = {
    "Tell me a story about a little dog named Max.",
    "What did Max do with the ball?",
    "How did the story end?",
};
constexpr int kMaxTokens = 20;

// Runs `command` through the shell; its stdout, and the exit code in `rc`.
std::string Shell(const std::string& command, int* rc) {
  krul::testing::ShellResult r = krul::testing::RunShell(command, /*merge_stderr=*/false);
  *rc = r.exit_code;
  return std::move(r.output);
}

// Runs `fn` on a thread that joined network namespace `ns`: sockets it
// opens are that namespace's. False when the namespace cannot be entered.
bool RunInNetns(const std::string& ns, const std::function<void()>& fn) {
  bool entered = false;
  std::thread t([&] {
    const int fd = open(("/var/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    entered = setns(fd, CLONE_NEWNET) == 0;
    close(fd);
    if (entered) fn();
  });
  t.join();
  return entered;
}

// The iproute2 binary (ChildProcess execs a path, without a PATH search).
std::string IpBinary() {
  for (const char* p : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"}) {
    if (access(p, X_OK) == 0) return p;
  }
  return "ip";
}

std::vector<std::string> ModelFlags() {
  WorkerOptions o = testing::TestModelOptions();
  if (o.synthetic) return {"--synthetic", "--synthetic_shape=64,172,6,8,4,512,256"};
  return {"--model=" + o.model_path, "--tokenizer=" + o.tokenizer_path};
}

class TestbedTest : public ::testing::Test {
 protected:
  void SetUp() override {
#if !defined(KRUL_KVSTORE_BIN) || !defined(KRUL_TESTBED_SCRIPT)
    GTEST_SKIP() << "krul-kvstore is not built";
#else
    int rc = 0;
    const std::string why = Shell(absl::StrCat(KRUL_TESTBED_SCRIPT, " check 2>&1"), &rc);
    if (rc != 0) {
      GTEST_SKIP() << "network namespaces cannot be made here, so there is no real link to "
                      "test across: "
                   << why;
    }
    name_ = absl::StrFormat("krultb%06x", static_cast<unsigned>(getpid()) & 0xffffff);
    const std::string env =
        Shell(absl::StrCat(KRUL_TESTBED_SCRIPT, " up --name ", name_, " --rate 400mbit"), &rc);
    ASSERT_EQ(rc, 0) << "testbed.sh up failed: " << env;
    up_ = true;
    for (const std::string& line : std::vector<std::string>(absl::StrSplit(env, '\n'))) {
      const size_t eq = line.find('=');
      if (eq != std::string::npos) tb_[line.substr(0, eq)] = line.substr(eq + 1);
    }
    ASSERT_FALSE(tb_["KRUL_TB_STORAGE_ADDR"].empty()) << env;

    // The storage node: the kvstore, UCX over TCP on its veth end only.
    auto kv =
        ChildProcess::Start({IpBinary(), "netns", "exec", tb_["KRUL_TB_STORAGE_NS"], "env",
                             "UCX_TLS=tcp", "UCX_NET_DEVICES=" + tb_["KRUL_TB_STORAGE_DEV"],
                             KRUL_KVSTORE_BIN, "--host=" + tb_["KRUL_TB_STORAGE_ADDR"], "--port=0",
                             "--metrics_port=0", "--ucx", "--tiers=dram", "--insecure"},
                            "krul-kvstore listening on");
    ASSERT_TRUE(kv.ok()) << kv.status();
    kvstore_ = *std::move(kv);
    kv_address_ =
        absl::StrCat(tb_["KRUL_TB_STORAGE_ADDR"], ":", PortFromLine(kvstore_->ready_line()));
    const std::string& line = kvstore_->ready_line();
    metrics_port_ = std::atoi(line.c_str() + line.find("metrics_port ") + 13);
#endif
  }

  void TearDown() override {
    for (auto& w : workers_) {
      if (w) {
        EXPECT_EQ(w->Terminate(), 0);
      }
    }
    workers_.clear();
    if (kvstore_) kvstore_->Terminate();
    kvstore_.reset();
#ifdef KRUL_TESTBED_SCRIPT
    if (up_) {
      int rc = 0;
      Shell(absl::StrCat(KRUL_TESTBED_SCRIPT, " down --name ", name_, " 2>&1"), &rc);
      EXPECT_EQ(rc, 0);
      const std::string left = Shell("ip netns list 2>/dev/null", &rc);
      EXPECT_EQ(left.find(name_), std::string::npos) << "namespaces left behind: " << left;
    }
#endif
  }

  // Starts a worker on the compute node (its HTTP on that node's loopback);
  // returns its port. Costs are fixed (no probe, no live refresh) so the
  // split is the same on every machine: the stream's latency makes the
  // best split recompute the first layers and load the rest.
  int StartWorker(const std::vector<std::string>& extra) {
    std::vector<std::string> argv = {IpBinary(),
                                     "netns",
                                     "exec",
                                     tb_["KRUL_TB_COMPUTE_NS"],
                                     "env",
                                     "UCX_TLS=tcp",
                                     "UCX_NET_DEVICES=" + tb_["KRUL_TB_COMPUTE_DEV"],
                                     KRUL_WORKER_BIN,
                                     "--host=127.0.0.1",
                                     "--http_port=0",
                                     "--threads=1",
                                     "--probe_compute=false",
                                     "--probe_load=false",
                                     "--freeze_costs",
                                     "--load_latency_us=1000",
                                     "--kvstore=" + kv_address_,
                                     "--insecure"};
    for (const std::string& f : ModelFlags()) argv.push_back(f);
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto w = ChildProcess::Start(argv, "krul-worker listening on", absl::Seconds(60));
    EXPECT_TRUE(w.ok()) << w.status();
    if (!w.ok()) return 0;
    const int port = PortFromLine((*w)->ready_line());
    workers_.push_back(*std::move(w));
    return port;
  }

  // Three turns alternating between the two workers (A, B, A) on the
  // compute node, each equal to the uninterrupted run; turns 2 and 3 are
  // restored from the storage node. Returns the kvstore's /metrics.
  std::string Conversation(const std::string& mode, int port_a, int port_b, double* loaded) {
    WorkerOptions o = testing::TestModelOptions();
    auto model = o.synthetic ? MakeSyntheticModel(o.synthetic_shape, o.synthetic_seed)
                             : LoadModel(o.model_path);
    EXPECT_TRUE(model.ok());
    auto tokenizer = o.synthetic ? Tokenizer::FromVocabulary(*(*model)->vocabulary())
                                 : Tokenizer::FromLlama2cFile(o.tokenizer_path);
    EXPECT_TRUE(tokenizer.ok());
    if (!model.ok() || !tokenizer.ok()) return "";
    testing::ReferenceConversation reference(**model, *tokenizer);
    std::string metrics;
    const bool entered = RunInNetns(tb_["KRUL_TB_COMPUTE_NS"], [&] {
      ChatClient a("127.0.0.1", port_a), b("127.0.0.1", port_b);
      ChatClient* route[] = {&a, &b, &a};
      int persisted[] = {0, 0};  // by worker A, B
      json messages = json::array();
      for (size_t turn = 0; turn < kUserTurns.size(); ++turn) {
        SCOPED_TRACE(absl::StrCat(mode, " turn ", turn + 1));
        messages.push_back({{"role", "user"}, {"content", kUserTurns[turn]}});
        const json request = {{"messages", messages},    {"max_tokens", kMaxTokens},
                              {"temperature", 0},        {"krul_mode", mode},
                              {"conversation_id", mode}, {"return_token_ids", true}};
        ChatReply reply = route[turn]->Chat(request);
        ASSERT_EQ(reply.http_status, 200) << reply.error;
        const json& k = reply.body["krul"];
        std::vector<int> ids;
        if (k.contains("completion_token_ids")) {
          ids = k["completion_token_ids"].get<std::vector<int>>();
        }
        EXPECT_EQ(ids, reference.Turn(kUserTurns[turn], kMaxTokens));
        if (turn > 0) {
          EXPECT_EQ(k["restore"], "hit") << k.dump();
          *loaded += k["loaded_bytes"].get<double>();
        }
        messages.push_back({{"role", "assistant"}, {"content", reply.content}});
        // The next turn goes to the other worker once this one is stored.
        const int w = turn == 1 ? 1 : 0;
        ++persisted[w];
        ChatClient& c = *route[turn];
        ASSERT_TRUE(WaitFor(
            [&] {
              auto [status, body] = c.Get("/metrics");
              return status == 200 && MetricValue(body, "krul_worker_persists_total",
                                                  "result=\"ok\"") >= persisted[w];
            },
            absl::Seconds(60), "the turn to be persisted"));
      }
      ChatClient kv(tb_["KRUL_TB_STORAGE_ADDR"], metrics_port_);
      metrics = kv.Get("/metrics").second;
    });
    EXPECT_TRUE(entered) << "cannot enter namespace " << tb_["KRUL_TB_COMPUTE_NS"];
    return metrics;
  }

  std::string name_;
  bool up_ = false;
  std::map<std::string, std::string> tb_;
  std::unique_ptr<ChildProcess> kvstore_;
  std::string kv_address_;
  int metrics_port_ = 0;
  std::vector<std::unique_ptr<ChildProcess>> workers_;
};

void ExpectLoadedOverUcx(const std::string& metrics, double loaded) {
  EXPECT_GT(loaded, 0);
  EXPECT_GT(
      MetricValue(metrics, "krul_kvstore_transfer_bytes_total", "dir=\"out\",transport=\"ucx\""), 0)
      << metrics;
  EXPECT_EQ(
      MetricValue(metrics, "krul_kvstore_transfer_bytes_total", "dir=\"out\",transport=\"grpc\""),
      0)
      << metrics;
}

TEST_F(TestbedTest, LoadModeTurnsEqualTheUninterruptedRunAcrossTheLink) {
  const int a = StartWorker({"--mode=load"});
  const int b = StartWorker({"--mode=load"});
  ASSERT_TRUE(a > 0 && b > 0);
  double loaded = 0;
  const std::string m = Conversation("load", a, b, &loaded);
  ExpectLoadedOverUcx(m, loaded);
}

TEST_F(TestbedTest, KrulWithoutSharingEqualsTheUninterruptedRunAcrossTheLink) {
  const int a = StartWorker({"--mode=krul", "--target_ratio=1"});
  const int b = StartWorker({"--mode=krul", "--target_ratio=1"});
  ASSERT_TRUE(a > 0 && b > 0);
  double loaded = 0;
  const std::string m = Conversation("krul", a, b, &loaded);
  ExpectLoadedOverUcx(m, loaded);
}

}  // namespace
}  // namespace krul::worker
