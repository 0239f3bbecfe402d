// TLS, mutual TLS, certificate reloading, the plaintext rule and bearer
// metadata, end to end on loopback with throwaway certificates made at test
// time (test_support/tls_certs.h) and a stub gRPC service.
#include "krul/rpc/credentials.h"

#include <grpcpp/grpcpp.h>

#include <filesystem>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "krul/rpc/bearer_token.h"
#include "krul/v1/kvstore.grpc.pb.h"
#include "test_support/tls_certs.h"
#include "test_support/wait.h"

namespace krul::rpc {
namespace {

using ::krul::testing::MakeTestCerts;
using ::krul::testing::TestCerts;

TEST(CredentialsTest, LoopbackHosts) {
  for (const char* h :
       {"127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST", "::ffff:127.0.0.1"}) {
    EXPECT_TRUE(IsLoopbackHost(h)) << h;
  }
  for (const char* h : {"0.0.0.0", "::", "[::]", "", "10.0.0.1", "128.0.0.1", "example.com",
                        "localhost.example.com"}) {
    EXPECT_FALSE(IsLoopbackHost(h)) << h;
  }
}

TEST(CredentialsTest, HostOfAddress) {
  EXPECT_EQ(*HostOfAddress("127.0.0.1:7070"), "127.0.0.1");
  EXPECT_EQ(*HostOfAddress("[::1]:7070"), "::1");
  EXPECT_EQ(*HostOfAddress("ipv4:10.0.0.2:7070"), "10.0.0.2");
  EXPECT_EQ(*HostOfAddress("dns:///kvstore-0.kvstore:7070"), "kvstore-0.kvstore");
  EXPECT_EQ(HostOfAddress(":7070").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(HostOfAddress("[::1:7070").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CredentialsTest, PlaintextOnlyOnLoopbackOrWithInsecure) {
  EXPECT_TRUE(CheckPlaintext("listener", "127.0.0.1", false).ok());
  absl::StatusOr<std::string> refused = CheckPlaintext("listener", "0.0.0.0", false);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("--insecure"), std::string::npos);
  absl::StatusOr<std::string> allowed = CheckPlaintext("listener", "0.0.0.0", true);
  ASSERT_TRUE(allowed.ok());
  EXPECT_NE(allowed->find("INSECURE"), std::string::npos);
}

TEST(CredentialsTest, BadFilesAreStartUpErrors) {
  ServerTlsOptions only_cert;
  only_cert.cert_file = "/nonexistent.pem";
  EXPECT_EQ(MakeServerCredentials(only_cert).status().code(), absl::StatusCode::kInvalidArgument);
  ServerTlsOptions missing;
  missing.cert_file = "/nonexistent/cert.pem";
  missing.key_file = "/nonexistent/key.pem";
  EXPECT_EQ(MakeServerCredentials(missing).status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<TestCerts> certs = MakeTestCerts();
  ASSERT_TRUE(certs.ok()) << certs.status();
  ServerTlsOptions swapped;  // A key where the certificate belongs.
  swapped.cert_file = certs->Key("server");
  swapped.key_file = certs->Key("server");
  EXPECT_EQ(MakeServerCredentials(swapped).status().code(), absl::StatusCode::kFailedPrecondition);
  ServerTlsOptions ca_only;
  ca_only.client_ca_file = certs->Cert("ca");
  EXPECT_EQ(MakeServerCredentials(ca_only).status().code(), absl::StatusCode::kInvalidArgument);
  std::filesystem::remove_all(certs->dir);
}

// Answers Health with the authorization metadata it received.
class EchoService final : public v1::KvStore::Service {
 public:
  grpc::Status Health(grpc::ServerContext* ctx, const v1::HealthRequest*,
                      v1::HealthResponse* resp) override {
    auto it = ctx->client_metadata().find(kAuthorizationKey);
    resp->set_version(it == ctx->client_metadata().end()
                          ? "none"
                          : std::string(it->second.data(), it->second.size()));
    return grpc::Status::OK;
  }
};

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<TestCerts> certs = MakeTestCerts();
    ASSERT_TRUE(certs.ok()) << certs.status();
    certs_ = *std::move(certs);
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
    std::filesystem::remove_all(certs_.dir);
  }

  void StartServer(const ServerTlsOptions& tls) {
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> creds = MakeServerCredentials(tls);
    ASSERT_TRUE(creds.ok()) << creds.status();
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", *creds, &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
  }

  ServerTlsOptions ServerTls(const std::string& name = "server") const {
    ServerTlsOptions o;
    o.cert_file = certs_.Cert(name);
    o.key_file = certs_.Key(name);
    return o;
  }
  ClientTlsOptions ClientTls() const {
    ClientTlsOptions o;
    o.enabled = true;
    o.ca_file = certs_.Cert("ca");
    return o;
  }

  // One Health call on a fresh channel; its status, and the echoed
  // authorization value in `*echo`.
  absl::StatusCode Call(const ClientTlsOptions& tls, const std::string& token = "",
                        std::string* echo = nullptr) {
    grpc::ChannelArguments args;
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds =
        MakeChannelCredentials(tls, &args);
    EXPECT_TRUE(creds.ok()) << creds.status();
    if (!creds.ok()) return creds.status().code();
    auto channel = CreateChannelWithToken(absl::StrCat("127.0.0.1:", port_), *creds, args, token);
    auto stub = v1::KvStore::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::HealthResponse resp;
    grpc::Status s = stub->Health(&ctx, v1::HealthRequest(), &resp);
    if (echo != nullptr) *echo = resp.version();
    return static_cast<absl::StatusCode>(s.error_code());
  }

  TestCerts certs_;
  EchoService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

TEST_F(TlsTest, TlsClientsConnectPlaintextAndUntrustingOnesDoNot) {
  ASSERT_NO_FATAL_FAILURE(StartServer(ServerTls()));
  EXPECT_EQ(Call(ClientTls()), absl::StatusCode::kOk);
  // A plaintext client against the TLS server.
  EXPECT_EQ(Call(ClientTlsOptions{}), absl::StatusCode::kUnavailable);
  // A client that trusts another CA.
  ClientTlsOptions other = ClientTls();
  other.ca_file = certs_.Cert("other_ca");
  EXPECT_EQ(Call(other), absl::StatusCode::kUnavailable);
}

TEST_F(TlsTest, ServerCertificateMustNameTheHost) {
  ASSERT_NO_FATAL_FAILURE(StartServer(ServerTls("wrong_name")));
  EXPECT_EQ(Call(ClientTls()), absl::StatusCode::kUnavailable);
  ClientTlsOptions named = ClientTls();
  named.server_name = "wrong.example";  // The name its certificate carries.
  EXPECT_EQ(Call(named), absl::StatusCode::kOk);
}

TEST_F(TlsTest, MutualTlsRequiresAClientCertificateFromTheClientCa) {
  ServerTlsOptions tls = ServerTls();
  tls.client_ca_file = certs_.Cert("ca");
  ASSERT_NO_FATAL_FAILURE(StartServer(tls));
  EXPECT_EQ(Call(ClientTls()), absl::StatusCode::kUnavailable);  // No client certificate.
  ClientTlsOptions rogue = ClientTls();
  rogue.cert_file = certs_.Cert("rogue_client");
  rogue.key_file = certs_.Key("rogue_client");
  EXPECT_EQ(Call(rogue), absl::StatusCode::kUnavailable);
  ClientTlsOptions client = ClientTls();
  client.cert_file = certs_.Cert("client");
  client.key_file = certs_.Key("client");
  EXPECT_EQ(Call(client), absl::StatusCode::kOk);
}

TEST_F(TlsTest, RotatedCertificatesAreUsedWithoutRestart) {
  // The server starts with a certificate from a CA the client does not
  // trust; replacing the files fixes new connections within the refresh
  // interval.
  ASSERT_TRUE(testing::IssueTestCert(certs_, "rotating", "other_ca", "IP:127.0.0.1").ok());
  ServerTlsOptions tls = ServerTls("rotating");
  tls.refresh_interval = absl::Seconds(1);
  ASSERT_NO_FATAL_FAILURE(StartServer(tls));
  EXPECT_EQ(Call(ClientTls()), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(testing::IssueTestCert(certs_, "rotating", "ca", "IP:127.0.0.1").ok());
  EXPECT_TRUE(testing::WaitFor([&] { return Call(ClientTls()) == absl::StatusCode::kOk; },
                               absl::Seconds(30), "the rotated certificate to be served",
                               absl::Milliseconds(200)));
}

TEST_F(TlsTest, TokenTravelsAsBearerMetadata) {
  ASSERT_NO_FATAL_FAILURE(StartServer(ServerTls()));
  std::string echo;
  EXPECT_EQ(Call(ClientTls(), "0123456789abcdef-token", &echo), absl::StatusCode::kOk);
  EXPECT_EQ(echo, "Bearer 0123456789abcdef-token");
  EXPECT_EQ(Call(ClientTls(), "", &echo), absl::StatusCode::kOk);
  EXPECT_EQ(echo, "none");
}

}  // namespace
}  // namespace krul::rpc
