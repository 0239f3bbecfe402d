// Unit tests of KvStoreClient that need no server: options, rendezvous
// ranking, argument checks, and failure against unreachable shards.
#include "krul/kvclient/kvstore_client.h"

#include <algorithm>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace krul {
namespace {

KvStoreClientOptions Options(std::vector<std::string> addresses) {
  KvStoreClientOptions o;
  o.addresses = std::move(addresses);
  o.rpc_timeout = absl::Milliseconds(500);
  o.initial_backoff = absl::Milliseconds(1);
  o.max_backoff = absl::Milliseconds(5);
  // Most addresses here are names that nothing connects to.
  o.allow_insecure = true;
  return o;
}

TEST(KvStoreClientTest, OptionsErrorsNameTheField) {
  struct Case {
    const char* field;
    void (*mutate)(KvStoreClientOptions&);
  };
  const Case cases[] = {
      {"addresses", [](KvStoreClientOptions& o) { o.addresses.clear(); }},
      {"addresses", [](KvStoreClientOptions& o) { o.addresses.push_back(o.addresses[0]); }},
      {"replication", [](KvStoreClientOptions& o) { o.replication = 3; }},
      {"replication", [](KvStoreClientOptions& o) { o.replication = 0; }},
      {"min_write_replicas", [](KvStoreClientOptions& o) { o.min_write_replicas = 5; }},
      {"rpc_timeout", [](KvStoreClientOptions& o) { o.rpc_timeout = absl::ZeroDuration(); }},
      {"max_attempts", [](KvStoreClientOptions& o) { o.max_attempts = 0; }},
      {"initial_backoff", [](KvStoreClientOptions& o) { o.max_backoff = absl::Microseconds(1); }},
      {"inline_put_bytes", [](KvStoreClientOptions& o) { o.inline_put_bytes = 1ull << 40; }},
      {"reconnect_backoff",
       [](KvStoreClientOptions& o) { o.reconnect_backoff_max = absl::Microseconds(1); }},
      {"connect_timeout",
       [](KvStoreClientOptions& o) { o.connect_timeout = absl::ZeroDuration(); }},
      {"token", [](KvStoreClientOptions& o) { o.bearer_token = "short"; }},
  };
  for (const Case& c : cases) {
    KvStoreClientOptions o = Options({"a:1", "b:2"});
    c.mutate(o);
    absl::Status s = o.Validate();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_NE(s.message().find(c.field), std::string::npos) << s;
    EXPECT_FALSE(KvStoreClient::Create(o).ok());
  }
  EXPECT_TRUE(Options({"a:1", "b:2"}).Validate().ok());
}

TEST(KvStoreClientTest, PlaintextOffLoopbackNeedsAllowInsecure) {
  KvStoreClientOptions o = Options({"127.0.0.1:7070", "10.0.0.1:7070"});
  o.allow_insecure = false;
  absl::Status s = o.Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("10.0.0.1:7070"), std::string::npos) << s;
  o.addresses = {"127.0.0.1:7070", "[::1]:7070", "localhost:7070"};
  EXPECT_TRUE(o.Validate().ok());
  o.addresses = {"10.0.0.1:7070"};
  o.tls.enabled = true;  // TLS with the system's roots: fine anywhere.
  EXPECT_TRUE(o.Validate().ok());
  o.tls.ca_file = "/nonexistent/ca.pem";
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kNotFound);
}

TEST(KvStoreClientTest, RankingIsAStablePermutationIndependentOfListOrder) {
  std::vector<std::string> shards = {"s1:1", "s2:1", "s3:1", "s4:1", "s5:1"};
  std::vector<std::string> reversed(shards.rbegin(), shards.rend());
  auto a = KvStoreClient::Create(Options(shards));
  auto b = KvStoreClient::Create(Options(reversed));
  ASSERT_TRUE(a.ok() && b.ok());
  for (int i = 0; i < 100; ++i) {
    std::string conv = absl::StrCat("c", i);
    std::vector<std::string> ra = (*a)->RankShards("t", conv);
    std::vector<std::string> rb = (*b)->RankShards("t", conv);
    EXPECT_EQ(ra, rb) << "ranking must not depend on the order of the address list";
    std::vector<std::string> sorted = ra;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, std::vector<std::string>(shards.begin(), shards.end()));
    EXPECT_EQ((*a)->RankShards("t", conv), ra) << "deterministic";
  }
  // Tenants are part of the key: the same conversation id of two tenants
  // is placed independently.
  int differ = 0;
  for (int i = 0; i < 200; ++i) {
    std::string conv = absl::StrCat("c", i);
    differ += (*a)->RankShards("t1", conv)[0] != (*a)->RankShards("t2", conv)[0];
  }
  EXPECT_GT(differ, 100);
}

TEST(KvStoreClientTest, RemovingAShardOnlyMovesItsKeys) {
  std::vector<std::string> four = {"s1:1", "s2:1", "s3:1", "s4:1"};
  std::vector<std::string> three = {"s1:1", "s2:1", "s4:1"};  // s3 left
  auto c4 = KvStoreClient::Create(Options(four));
  auto c3 = KvStoreClient::Create(Options(three));
  ASSERT_TRUE(c4.ok() && c3.ok());
  for (int i = 0; i < 500; ++i) {
    std::string conv = absl::StrCat("c", i);
    std::string before = (*c4)->ReplicasFor("t", conv)[0];
    std::string after = (*c3)->ReplicasFor("t", conv)[0];
    if (before != "s3:1") {
      EXPECT_EQ(before, after) << conv;
    }
  }
}

TEST(KvStoreClientTest, ReplicasAreTheTopOfTheRanking) {
  KvStoreClientOptions o = Options({"s1:1", "s2:1", "s3:1"});
  o.replication = 2;
  auto c = KvStoreClient::Create(o);
  ASSERT_TRUE(c.ok());
  std::vector<std::string> ranked = (*c)->RankShards("t", "x");
  std::vector<std::string> replicas = (*c)->ReplicasFor("t", "x");
  ASSERT_EQ(replicas.size(), 2u);
  EXPECT_EQ(replicas[0], ranked[0]);
  EXPECT_EQ(replicas[1], ranked[1]);
}

TEST(KvStoreClientTest, BadArgumentsFailBeforeAnyRpc) {
  auto c = KvStoreClient::Create(Options({"127.0.0.1:1"}));
  ASSERT_TRUE(c.ok());
  v1::ConversationKey key;
  key.set_tenant("t");
  EXPECT_EQ((*c)->Lookup(key).status().code(), absl::StatusCode::kInvalidArgument);
  v1::Manifest m;
  *m.mutable_key() = key;
  m.mutable_key()->set_conversation_id("c");
  m.set_model_id("m");
  m.set_n_layers(2);
  std::vector<std::string_view> junk = {"not a block"};
  absl::Status s = (*c)->Put(m, junk).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("blocks[0]"), std::string::npos) << s;
  std::vector<uint32_t> bad_index = {3};
  s = (*c)->Read(m, bad_index,
                 [](uint32_t, std::string_view, const DecodedBlock&) { return absl::OkStatus(); });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
}

TEST(KvStoreClientTest, UnreachableShardsAreUnavailableAfterBoundedRetries) {
  // Port 1 on loopback: nothing listens, connections are refused at once.
  auto c = KvStoreClient::Create(Options({"127.0.0.1:1"}));
  ASSERT_TRUE(c.ok());
  v1::ConversationKey key;
  key.set_tenant("t");
  key.set_conversation_id("c");
  absl::Time start = absl::Now();
  absl::Status s = (*c)->Lookup(key).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_NE(s.message().find("127.0.0.1:1"), std::string::npos) << "names the shard: " << s;
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ((*c)->Health("127.0.0.1:1").status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace krul
