// Tenants on the worker, in process: the stored id is scoped by the API
// key's tenant (session/tenant_scope.h), API keys come from a hashed keys
// file (server/api_keys.h), and the HTTP API refuses to run without keys
// off loopback (CheckHttpWithoutApiKeys). The HTTP flows themselves are in
// worker_tenant_test.cc.
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "krul/rpc/bearer_token.h"
#include "services/worker/worker_test_util.h"
#include "worker/server/api_keys.h"
#include "worker/session/tenant_scope.h"

namespace krul::worker {
namespace {

using testing::SharedStore;
using testing::TestModelOptions;

constexpr char kAliceKey[] = "sk-alice-0123456789abcdef";
constexpr char kBobKey[] = "sk-bob-0123456789abcdef00";

TEST(TenantScopeTest, IdsOfDifferentTenantsNeverCoincide) {
  // No keys: the id as before tenants (stored conversations stay valid).
  EXPECT_EQ(TenantScopedId("", "c:conv-1"), "c:conv-1");
  EXPECT_EQ(TenantScopedId("alice", "c:conv-1"), "t:alice/c:conv-1");
  EXPECT_NE(TenantScopedId("alice", "c:x"), TenantScopedId("bob", "c:x"));
  EXPECT_NE(TenantScopedId("alice", "h:0123"), TenantScopedId("", "h:0123"));
  // Names that could make two pairs meet are not tenant names.
  EXPECT_TRUE(ValidateApiTenant("alice.team-1_@x").ok());
  for (const std::string& bad : {std::string(), std::string("a/c:b"), std::string("a:b"),
                                 std::string("a b"), std::string(kMaxApiTenantBytes + 1, 'a')}) {
    EXPECT_EQ(ValidateApiTenant(bad).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

std::string KeysPath(const std::string& name) {
  return absl::StrCat(::testing::TempDir(), "/tenant_test.", getpid(), ".", name);
}

void WriteKeys(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  ASSERT_TRUE(out.good());
}

std::string KeyLine(const std::string& tenant, const std::string& key) {
  return absl::StrCat(tenant, ":", rpc::Sha256Hex(key), "\n");
}

absl::StatusOr<std::string> Auth(const ApiKeys& keys, const std::string& header) {
  const absl::string_view value = header;
  return keys.Authenticate(&value);
}

TEST(ApiKeysTest, HashedKeysNameTheirTenants) {
  const std::string path = KeysPath("keys");
  WriteKeys(path, "# worker API keys\n" + KeyLine("alice", kAliceKey) + KeyLine("bob", kBobKey));
  auto keys = ApiKeys::FromFile(path, absl::ZeroDuration());
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_EQ(*Auth(**keys, absl::StrCat("Bearer ", kAliceKey)), "alice");
  EXPECT_EQ(*Auth(**keys, absl::StrCat("Bearer ", kBobKey)), "bob");
  auto none = (*keys)->Authenticate(nullptr);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnauthenticated);
  auto wrong = Auth(**keys, "Bearer sk-mallory-0123456789abcdef");
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(wrong.status().message().find("mallory"), absl::string_view::npos) << wrong.status();
  EXPECT_EQ(Auth(**keys, kAliceKey).status().code(), absl::StatusCode::kUnauthenticated);
  // The file's hash is not a key.
  EXPECT_FALSE(Auth(**keys, absl::StrCat("Bearer ", rpc::Sha256Hex(kAliceKey))).ok());

  // Revoking bob and adding carol takes effect without a restart.
  WriteKeys(path, KeyLine("alice", kAliceKey) + KeyLine("carol", kBobKey) + "# bob -> carol\n");
  EXPECT_EQ(*Auth(**keys, absl::StrCat("Bearer ", kBobKey)), "carol");
  std::remove(path.c_str());
}

TEST(ApiKeysTest, RefusesKeysInClearAndTenantNamesThatCouldCollide) {
  const std::string path = KeysPath("bad");
  WriteKeys(path, absl::StrCat("alice:", kAliceKey, "\n"));
  EXPECT_EQ(ApiKeys::FromFile(path).status().code(), absl::StatusCode::kInvalidArgument);
  WriteKeys(path, KeyLine("alice/c:x", kAliceKey));
  EXPECT_EQ(ApiKeys::FromFile(path).status().code(), absl::StatusCode::kInvalidArgument);
  std::remove(path.c_str());
  EXPECT_EQ(ApiKeys::FromFile(path).status().code(), absl::StatusCode::kNotFound);
}

TEST(ApiKeysTest, NoKeysOnlyOnLoopbackUnlessInsecureHttp) {
  WorkerOptions o = TestModelOptions();
  EXPECT_TRUE(o.Validate().ok());
  o.host = "0.0.0.0";
  absl::Status refused = o.Validate();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_NE(refused.message().find("--api_keys_file"), absl::string_view::npos) << refused;
  EXPECT_NE(refused.message().find("--insecure_http"), absl::string_view::npos) << refused;
  o.host = "10.1.2.3";
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kFailedPrecondition);
  o.allow_insecure_http = true;
  EXPECT_TRUE(o.Validate().ok());
  auto warning = CheckHttpWithoutApiKeys("10.1.2.3", true);
  ASSERT_TRUE(warning.ok());
  EXPECT_NE(warning->find("INSECURE"), std::string::npos);
  o.allow_insecure_http = false;
  o.api_keys_file = "/keys";
  EXPECT_TRUE(o.Validate().ok());
  EXPECT_TRUE(CheckHttpWithoutApiKeys("::1", false).ok());
}

// Two worker cores sharing one store, as two worker processes share the
// kvstore; each turn names its tenant as the HTTP API sets it from the key.
class TenantTurnsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WorkerOptions o = TestModelOptions();
    for (auto* core : {&a_, &b_}) {
      auto created = WorkerCore::Create(o, std::make_unique<SharedStore>(store_));
      ASSERT_TRUE(created.ok()) << created.status();
      *core = *std::move(created);
    }
  }

  // One greedy turn of `tenant`, committed and persisted.
  CompletionStats Turn(WorkerCore& core, const std::string& tenant, const std::string& id,
                       const std::vector<ChatMessage>& messages, std::string* content = nullptr) {
    ChatRequest r;
    r.messages = messages;
    r.max_tokens = 8;
    r.temperature = 0;
    r.conversation_id = id;
    r.tenant = tenant;
    auto session = core.StartChat(r, absl::Now());
    EXPECT_TRUE(session.ok()) << session.status();
    if (!session.ok()) return {};
    while (!(*session)->done()) EXPECT_TRUE((*session)->Next().ok());
    CompletionStats stats = (*session)->stats();
    if (content != nullptr) *content = (*session)->content();
    (*session)->Commit();
    session->reset();
    EXPECT_TRUE(core.persister().Drain(absl::Seconds(60)));
    return stats;
  }

  // Alice's two turns on `id` with `bob` (a tenant, or "" for the worker's
  // keyless tenant) meddling in between: naming the same id with other
  // messages, and a fresh id. Returns {bob on alice's id, bob on a fresh
  // id, alice's second turn}.
  std::vector<CompletionStats> AliceWithBobInBetween(const std::string& alice,
                                                     const std::string& bob) {
    std::vector<ChatMessage> a = {{Role::kUser, "Tell me a story about a little dog named Max."}};
    std::string answer;
    CompletionStats first = Turn(*a_, alice, "conv-7", a, &answer);
    EXPECT_EQ(first.restore, "miss");
    const std::vector<ChatMessage> b = {{Role::kUser, "Once upon a time there was a cat."}};
    CompletionStats probe = Turn(*b_, bob, "conv-7", b);
    CompletionStats fresh = Turn(*b_, bob, "conv-never-used", b);
    a.push_back({Role::kAssistant, answer});
    a.push_back({Role::kUser, "What did Max do with the ball?"});
    CompletionStats second = Turn(*a_, alice, "conv-7", a);
    return {probe, fresh, second};
  }

  std::shared_ptr<MemoryConversationStore> store_ = std::make_shared<MemoryConversationStore>();
  std::unique_ptr<WorkerCore> a_, b_;
};

TEST_F(TenantTurnsTest, AnotherTenantNamingAnIdTouchesAnotherConversation) {
  std::vector<CompletionStats> s = AliceWithBobInBetween("alice", "bob");
  ASSERT_EQ(s.size(), 3u);
  // Bob cannot tell alice's id from an unused one...
  EXPECT_EQ(s[0].restore, "miss");
  EXPECT_EQ(s[0].fallback_reason, "");
  EXPECT_EQ(s[0].restore, s[1].restore);
  EXPECT_EQ(s[0].fallback_reason, s[1].fallback_reason);
  // ... and alice's cache is untouched: her next turn restores it.
  EXPECT_EQ(s[2].restore, "hit") << s[2].fallback_reason;
  // Bob's turns were stored under his own namespace: continuing his
  // conversation as bob restores it.
}

TEST_F(TenantTurnsTest, WithoutTenantsTheSameMovesInvalidateAndProbe) {
  // The control: one tenant for everybody (a worker without API keys) shows
  // the attack the scoping stops, so the test above can fail.
  std::vector<CompletionStats> s = AliceWithBobInBetween("", "");
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(s[0].restore, "fallback");
  EXPECT_EQ(s[0].fallback_reason, "mismatch");
  EXPECT_EQ(s[1].restore, "miss");
  EXPECT_NE(s[2].restore, "hit");
  EXPECT_EQ(s[2].fallback_reason, "mismatch");
}

TEST_F(TenantTurnsTest, SameMessagesWithoutAnIdDoNotReachAnotherTenantsCache) {
  // Keyed by the digest of the messages (no conversation id): bob sending
  // alice's exact history must not find her stored turn.
  std::vector<ChatMessage> m = {{Role::kUser, "Tell me a story about a little dog named Max."}};
  std::string answer;
  Turn(*a_, "alice", "", m, &answer);
  m.push_back({Role::kAssistant, answer});
  m.push_back({Role::kUser, "What did Max do with the ball?"});
  EXPECT_EQ(Turn(*b_, "bob", "", m).restore, "miss");
  EXPECT_EQ(Turn(*a_, "alice", "", m).restore, "hit");
}

}  // namespace
}  // namespace krul::worker
