// Security of the kvstore's control plane, in process on 127.0.0.1: bearer
// tokens (none, wrong, another tenant's), tenant scoping of keys, put ids,
// leases and read grants, the plaintext and trusting-mode rules, TLS and
// mutual TLS through the real client, and reloading of the tokens file.
#include <grpcpp/grpcpp.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "krul/kvclient/kvstore_client.h"
#include "krul/rpc/bearer_token.h"
#include "krul/transport/fake_transport.h"
#include "kv_test_util.h"
#include "kvstore/server.h"
#include "test_support/tls_certs.h"
#include "test_support/wait.h"

namespace krul::kvstore {
namespace {

using ::krul::testing::Key;
using ::krul::testing::MakeVersion;
using ::krul::testing::TempDir;
using ::krul::testing::TestVersion;

constexpr char kAliceToken[] = "alice-token-0123456789abcdef";
constexpr char kBobToken[] = "bob-token-0123456789abcdef";
constexpr char kCarolToken[] = "carol-token-0123456789abcdef";

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

std::string TokenLine(const std::string& tenant, const std::string& token) {
  return absl::StrCat(tenant, ":", rpc::Sha256Hex(token), "\n");
}

class KvStoreSecurityTest : public ::testing::Test {
 protected:
  ServerOptions Options() {
    ServerOptions o;
    o.host = "127.0.0.1";
    o.port = 0;
    o.metrics_port = -1;
    o.maintenance_interval = absl::Milliseconds(50);
    o.store.tiers = TierMode::kDramOnly;
    o.store.dram_capacity_bytes = 64 << 20;
    o.store.default_ttl = absl::ZeroDuration();
    tokens_file_ = dir_.Sub("tokens");
    WriteFile(tokens_file_,
              "# test tenants\n" + TokenLine("alice", kAliceToken) + TokenLine("bob", kBobToken));
    o.tenant_tokens_file = tokens_file_;
    return o;
  }

  void Start(const ServerOptions& o, std::unique_ptr<Transport> transport = nullptr) {
    absl::StatusOr<std::unique_ptr<KvStoreServer>> s =
        KvStoreServer::Start(o, std::move(transport));
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    address_ = absl::StrCat("127.0.0.1:", server_->port());
  }

  // A raw stub whose calls carry `token` (none when empty).
  std::unique_ptr<v1::KvStore::Stub> Stub(const std::string& token) {
    return v1::KvStore::NewStub(rpc::CreateChannelWithToken(
        address_, grpc::InsecureChannelCredentials(), grpc::ChannelArguments(), token));
  }

  template <typename Request, typename Response, typename Method>
  absl::StatusCode Call(v1::KvStore::Stub& stub, Method method, const Request& req,
                        Response* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return static_cast<absl::StatusCode>((stub.*method)(&ctx, req, resp).error_code());
  }

  absl::StatusCode Put(v1::KvStore::Stub& stub, const TestVersion& v) {
    v1::PutRequest req;
    *req.mutable_manifest() = v.manifest;
    for (const std::string& b : v.blocks) req.add_blocks(b);
    v1::PutResponse resp;
    return Call(stub, &v1::KvStore::Stub::Put, req, &resp);
  }

  absl::StatusCode Lookup(v1::KvStore::Stub& stub, const v1::ConversationKey& key,
                          v1::Manifest* out = nullptr) {
    v1::LookupRequest req;
    *req.mutable_key() = key;
    v1::LookupResponse resp;
    absl::StatusCode code = Call(stub, &v1::KvStore::Stub::Lookup, req, &resp);
    if (out != nullptr) *out = resp.manifest();
    return code;
  }

  TempDir dir_;
  std::string tokens_file_;
  std::unique_ptr<KvStoreServer> server_;
  std::string address_;
};

TEST_F(KvStoreSecurityTest, CallsWithoutAValidTokenAreUnauthenticated) {
  ASSERT_NO_FATAL_FAILURE(Start(Options()));
  TestVersion v = MakeVersion(Key("alice", "c1", 1), 1, 1000, 1);
  EXPECT_EQ(Put(*Stub(""), v), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Put(*Stub("not-a-known-token-0123456789"), v), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Lookup(*Stub(""), v.manifest.key()), absl::StatusCode::kUnauthenticated);
  v1::StatsResponse stats;
  EXPECT_EQ(Call(*Stub(""), &v1::KvStore::Stub::Stats, v1::StatsRequest(), &stats),
            absl::StatusCode::kUnauthenticated);
  v1::ExchangeEndpointsResponse endpoints;
  EXPECT_EQ(Call(*Stub(""), &v1::KvStore::Stub::ExchangeEndpoints, v1::ExchangeEndpointsRequest(),
                 &endpoints),
            absl::StatusCode::kUnauthenticated);
  // Health stays open for probes.
  v1::HealthResponse health;
  EXPECT_EQ(Call(*Stub(""), &v1::KvStore::Stub::Health, v1::HealthRequest(), &health),
            absl::StatusCode::kOk);
  // A valid token works, and the refusals were counted under their code.
  EXPECT_EQ(Put(*Stub(kAliceToken), v), absl::StatusCode::kOk);
}

TEST_F(KvStoreSecurityTest, TheTenantComesFromTheCredential) {
  ASSERT_NO_FATAL_FAILURE(Start(Options()));
  auto alice = Stub(kAliceToken);
  auto bob = Stub(kBobToken);
  // Alice leaves the tenant empty: it is hers.
  TestVersion v = MakeVersion(Key("", "shared-id", 1), 1, 1000, 2);
  ASSERT_EQ(Put(*alice, v), absl::StatusCode::kOk);
  v1::Manifest stored;
  ASSERT_EQ(Lookup(*alice, Key("", "shared-id", 1), &stored), absl::StatusCode::kOk);
  EXPECT_EQ(stored.key().tenant(), "alice");
  EXPECT_EQ(Lookup(*alice, Key("alice", "shared-id", 1)), absl::StatusCode::kOk);

  // Bob naming Alice's tenant is refused whatever he asks for.
  EXPECT_EQ(Lookup(*bob, Key("alice", "shared-id", 1)), absl::StatusCode::kPermissionDenied);
  TestVersion forged = MakeVersion(Key("alice", "shared-id", 2), 1, 1000, 3);
  EXPECT_EQ(Put(*bob, forged), absl::StatusCode::kPermissionDenied);
  v1::DeleteRequest del;
  *del.mutable_key() = Key("alice", "shared-id", 1);
  del.set_all_turns(true);
  v1::DeleteResponse deleted;
  EXPECT_EQ(Call(*bob, &v1::KvStore::Stub::Delete, del, &deleted),
            absl::StatusCode::kPermissionDenied);
  v1::GetRequest get;
  *get.mutable_key() = Key("alice", "shared-id", 1);
  v1::GetResponse got;
  EXPECT_EQ(Call(*bob, &v1::KvStore::Stub::Get, get, &got), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(got.blocks_size(), 0);
  v1::PinRequest pin;
  *pin.mutable_key() = Key("alice", "shared-id", 1);
  v1::PinResponse pinned;
  EXPECT_EQ(Call(*bob, &v1::KvStore::Stub::Pin, pin, &pinned), absl::StatusCode::kPermissionDenied);

  // The same conversation id in Bob's own namespace is a different object:
  // he cannot see, probe or invalidate Alice's.
  EXPECT_EQ(Lookup(*bob, Key("", "shared-id", 1)), absl::StatusCode::kNotFound);
  del.mutable_key()->set_tenant("");
  EXPECT_EQ(Call(*bob, &v1::KvStore::Stub::Delete, del, &deleted), absl::StatusCode::kNotFound);
  TestVersion bobs = MakeVersion(Key("", "shared-id", 1), 1, 1000, 4);
  ASSERT_EQ(Put(*bob, bobs), absl::StatusCode::kOk);
  ASSERT_EQ(Lookup(*alice, Key("", "shared-id", 1), &stored), absl::StatusCode::kOk);
  EXPECT_EQ(stored.plan(), v.manifest.plan()) << "Bob's put replaced Alice's version";
}

TEST_F(KvStoreSecurityTest, ForeignPutIdsLeasesAndGrantsDoNotExist) {
  ASSERT_NO_FATAL_FAILURE(Start(Options(), FakeTransport::Create()));
  auto alice = Stub(kAliceToken);
  auto bob = Stub(kBobToken);
  TestVersion v = MakeVersion(Key("", "c", 1), 2, 1000, 5);

  v1::BeginPutRequest begin;
  *begin.mutable_key() = v.manifest.key();
  for (const std::string& b : v.blocks) begin.add_block_sizes(b.size());
  v1::BeginPutResponse reservation;
  ASSERT_EQ(Call(*alice, &v1::KvStore::Stub::BeginPut, begin, &reservation), absl::StatusCode::kOk);
  // Bob cannot write into, commit or abort Alice's put.
  {
    grpc::ClientContext ctx;
    v1::WriteBlocksResponse written;
    auto writer = bob->WriteBlocks(&ctx, &written);
    v1::BlockChunk chunk;
    chunk.set_put_id(reservation.put_id());
    chunk.set_index(0);
    chunk.set_data(v.blocks[0]);
    writer->Write(chunk);
    writer->WritesDone();
    EXPECT_EQ(static_cast<absl::StatusCode>(writer->Finish().error_code()),
              absl::StatusCode::kNotFound);
  }
  v1::CommitPutRequest commit;
  commit.set_put_id(reservation.put_id());
  *commit.mutable_manifest() = v.manifest;
  v1::CommitPutResponse committed;
  EXPECT_EQ(Call(*bob, &v1::KvStore::Stub::CommitPut, commit, &committed),
            absl::StatusCode::kNotFound);
  v1::AbortPutRequest abort;
  abort.set_put_id(reservation.put_id());
  v1::AbortPutResponse aborted;
  EXPECT_EQ(Call(*bob, &v1::KvStore::Stub::AbortPut, abort, &aborted), absl::StatusCode::kNotFound);
  // Alice's put is untouched: she writes and commits it.
  {
    grpc::ClientContext ctx;
    v1::WriteBlocksResponse written;
    auto writer = alice->WriteBlocks(&ctx, &written);
    for (size_t i = 0; i < v.blocks.size(); ++i) {
      v1::BlockChunk chunk;
      chunk.set_put_id(reservation.put_id());
      chunk.set_index(static_cast<uint32_t>(i));
      chunk.set_data(v.blocks[i]);
      ASSERT_TRUE(writer->Write(chunk));
    }
    writer->WritesDone();
    ASSERT_TRUE(writer->Finish().ok());
  }
  ASSERT_EQ(Call(*alice, &v1::KvStore::Stub::CommitPut, commit, &committed), absl::StatusCode::kOk);

  // Leases.
  v1::PinRequest pin;
  *pin.mutable_key() = v.manifest.key();
  v1::PinResponse pinned;
  ASSERT_EQ(Call(*alice, &v1::KvStore::Stub::Pin, pin, &pinned), absl::StatusCode::kOk);
  v1::UnpinRequest unpin;
  unpin.set_lease_id(pinned.lease_id());
  v1::UnpinResponse unpinned;
  EXPECT_EQ(Call(*bob, &v1::KvStore::Stub::Unpin, unpin, &unpinned), absl::StatusCode::kNotFound);
  EXPECT_EQ(Call(*alice, &v1::KvStore::Stub::Unpin, unpin, &unpinned), absl::StatusCode::kOk);

  // Read grants (the data plane's capabilities).
  v1::GrantReadRequest grant;
  *grant.mutable_key() = v.manifest.key();
  v1::GrantReadResponse granted;
  ASSERT_EQ(Call(*alice, &v1::KvStore::Stub::GrantRead, grant, &granted), absl::StatusCode::kOk);
  EXPECT_EQ(granted.targets_size(), 2);
  v1::GrantReadResponse refused;
  EXPECT_EQ(Call(*bob, &v1::KvStore::Stub::GrantRead, grant, &refused), absl::StatusCode::kNotFound)
      << "Bob's own namespace has no such version";
  v1::ReleaseReadRequest release;
  release.set_grant_id(granted.grant_id());
  v1::ReleaseReadResponse released;
  EXPECT_EQ(Call(*bob, &v1::KvStore::Stub::ReleaseRead, release, &released),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(Call(*alice, &v1::KvStore::Stub::ReleaseRead, release, &released),
            absl::StatusCode::kOk);
  // Released: the grant is gone (a second release finds nothing).
  EXPECT_EQ(Call(*alice, &v1::KvStore::Stub::ReleaseRead, release, &released),
            absl::StatusCode::kNotFound);
}

TEST_F(KvStoreSecurityTest, ATokenAddedToTheFileWorksWithoutRestart) {
  ASSERT_NO_FATAL_FAILURE(Start(Options()));
  TestVersion v = MakeVersion(Key("", "c", 1), 1, 1000, 6);
  auto carol = Stub(kCarolToken);
  EXPECT_EQ(Put(*carol, v), absl::StatusCode::kUnauthenticated);
  WriteFile(tokens_file_, TokenLine("alice", kAliceToken) + TokenLine("carol", kCarolToken));
  EXPECT_TRUE(testing::WaitFor([&] { return Put(*carol, v) == absl::StatusCode::kOk; },
                               absl::Seconds(30), "carol's token to be accepted"));
  // Bob's line was removed: his token is revoked.
  EXPECT_EQ(Put(*Stub(kBobToken), v), absl::StatusCode::kUnauthenticated);
}

TEST(TenantAuthTest, ParsesHashesAndRejectsMalformedLines) {
  absl::StatusOr<absl::flat_hash_map<std::string, std::string>> t =
      ParseTenantTokens("# comment\n\n" + TokenLine("alice", kAliceToken) +
                        " bob : " + rpc::Sha256Hex(kBobToken) + "  # trailing comment\n");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->size(), 2u);
  EXPECT_EQ(t->at(rpc::Sha256Hex(kBobToken)), "bob");
  EXPECT_EQ(ParseTenantTokens("alice\n").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseTenantTokens(":" + rpc::Sha256Hex(kAliceToken)).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A plain token where the hash belongs is refused, not hashed silently.
  EXPECT_EQ(ParseTenantTokens(absl::StrCat("alice:", kAliceToken)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      ParseTenantTokens(TokenLine("a", kAliceToken) + TokenLine("b", kAliceToken)).status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST(TenantAuthTest, AMalformedReloadKeepsThePreviousTokens) {
  TempDir dir;
  const std::string path = dir.Sub("tokens");
  WriteFile(path, TokenLine("alice", kAliceToken));
  absl::StatusOr<std::unique_ptr<TenantAuth>> auth = TenantAuth::FromFile(path);
  ASSERT_TRUE(auth.ok()) << auth.status();
  const std::string header = absl::StrCat("Bearer ", kAliceToken);
  const absl::string_view value = header;
  absl::StatusOr<Caller> caller = (*auth)->AuthenticateHeader(&value);
  ASSERT_TRUE(caller.ok()) << caller.status();
  EXPECT_EQ(caller->tenant, "alice");
  EXPECT_FALSE(caller->trusted);
  WriteFile(path, "alice:not-a-hash\n");
  EXPECT_EQ((*auth)->Reload().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE((*auth)->AuthenticateHeader(&value).ok());
  EXPECT_EQ((*auth)->AuthenticateHeader(nullptr).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(TenantAuth::FromFile(dir.Sub("missing")).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(KvStoreSecurityTest, PlaintextAndTrustingModeOnlyOnLoopback) {
  ServerOptions o = Options();
  o.host = "0.0.0.0";
  absl::StatusOr<std::unique_ptr<KvStoreServer>> s = KvStoreServer::Start(o);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition) << s.status();
  EXPECT_NE(s.status().message().find("--insecure"), std::string::npos);

  absl::StatusOr<testing::TestCerts> certs = testing::MakeTestCerts();
  ASSERT_TRUE(certs.ok()) << certs.status();
  o.tls.cert_file = certs->Cert("server");
  o.tls.key_file = certs->Key("server");
  o.tenant_tokens_file.clear();  // TLS, but nobody authenticated.
  s = KvStoreServer::Start(o);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition) << s.status();
  o.tenant_tokens_file = tokens_file_;  // TLS and tokens: a network address is fine.
  s = KvStoreServer::Start(o);
  EXPECT_TRUE(s.ok()) << s.status();
  s = absl::UnknownError("stopped");
  std::filesystem::remove_all(certs->dir);

  ServerOptions insecure = Options();
  insecure.host = "0.0.0.0";
  insecure.tenant_tokens_file.clear();
  insecure.allow_insecure = true;
  s = KvStoreServer::Start(insecure);
  EXPECT_TRUE(s.ok()) << s.status();

  // The client side has the same rule.
  KvStoreClientOptions c;
  c.addresses = {"10.1.2.3:7070"};
  EXPECT_EQ(KvStoreClient::Create(c).status().code(), absl::StatusCode::kFailedPrecondition);
  c.allow_insecure = true;
  EXPECT_TRUE(KvStoreClient::Create(c).ok());
}

TEST_F(KvStoreSecurityTest, MutualTlsThroughTheClient) {
  absl::StatusOr<testing::TestCerts> certs = testing::MakeTestCerts();
  ASSERT_TRUE(certs.ok()) << certs.status();
  ServerOptions o = Options();
  o.tls.cert_file = certs->Cert("server");
  o.tls.key_file = certs->Key("server");
  o.tls.client_ca_file = certs->Cert("ca");
  ASSERT_NO_FATAL_FAILURE(Start(o));
  // The client needs the tenant for sharding: it names its own.
  TestVersion v = MakeVersion(Key("alice", "c", 1), 2, 3000, 7);
  const std::vector<std::string_view> views(v.blocks.begin(), v.blocks.end());

  auto client = [&](bool tls, bool client_cert, const std::string& token) {
    KvStoreClientOptions c;
    c.addresses = {address_};
    c.rpc_timeout = absl::Seconds(5);
    c.max_attempts = 1;
    c.bearer_token = token;
    c.tls.enabled = tls;
    if (tls) c.tls.ca_file = certs->Cert("ca");
    if (client_cert) {
      c.tls.cert_file = certs->Cert("client");
      c.tls.key_file = certs->Key("client");
    }
    absl::StatusOr<std::unique_ptr<KvStoreClient>> made = KvStoreClient::Create(c);
    EXPECT_TRUE(made.ok()) << made.status();
    return *std::move(made);
  };
  // A plaintext client against the TLS server.
  EXPECT_EQ(client(false, false, kAliceToken)->Put(v.manifest, views).status().code(),
            absl::StatusCode::kUnavailable);
  // TLS without a client certificate: the handshake fails.
  EXPECT_EQ(client(true, false, kAliceToken)->Put(v.manifest, views).status().code(),
            absl::StatusCode::kUnavailable);
  // mTLS but no token.
  EXPECT_EQ(client(true, true, "")->Put(v.manifest, views).status().code(),
            absl::StatusCode::kUnauthenticated);
  // Everything right: the version round-trips.
  auto good = client(true, true, kAliceToken);
  absl::StatusOr<v1::Manifest> put = good->Put(v.manifest, views);
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(put->key().tenant(), "alice");
  absl::StatusOr<std::vector<std::string>> blocks = good->ReadAll(*put);
  ASSERT_TRUE(blocks.ok()) << blocks.status();
  EXPECT_EQ(*blocks, v.blocks);
  std::filesystem::remove_all(certs->dir);
}

}  // namespace
}  // namespace krul::kvstore
