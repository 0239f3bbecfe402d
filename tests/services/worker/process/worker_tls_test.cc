// krul-worker's transport security, as a process: its gRPC service speaks
// TLS (and mutual TLS) with the given certificates and refuses the wrong
// clients, and plaintext off loopback (its gRPC service, its kvstore link)
// is refused unless --insecure.
#include <grpcpp/grpcpp.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "krul/rpc/credentials.h"
#include "krul/v1/worker.grpc.pb.h"
#include "test_support/child_process.h"
#include "test_support/shell.h"
#include "test_support/tls_certs.h"

namespace krul {
namespace {

using ::testing::HasSubstr;

// Runs krul-worker with `args` to completion; its exit code and output.
std::pair<int, std::string> RunWorker(const std::string& args) {
  const krul::testing::ShellResult r = krul::testing::RunShell(
      std::string("timeout --signal=KILL 60 ") + KRUL_WORKER_BIN + " " + args);
  return {r.exit_code, r.output};
}

TEST(WorkerTlsTest, PlaintextOffLoopbackIsRefusedWithoutInsecure) {
  // --insecure_http lets the keyless HTTP API through (worker_tenant_test.cc
  // has that rule), so what refuses here is the gRPC plaintext rule.
  auto [code, out] = RunWorker(
      "--synthetic --host=0.0.0.0 --http_port=0 --grpc_port=0 --probe_load=false "
      "--probe_compute=false --insecure_http");
  EXPECT_EQ(code, 1) << out;
  EXPECT_THAT(out, HasSubstr("--insecure "));
  EXPECT_THAT(out, HasSubstr("gRPC"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("grpc listening on")));
  // The kvstore link has the same rule.
  auto [kv_code, kv_out] = RunWorker(
      "--synthetic --http_port=0 --kvstore=10.255.255.1:7070 --probe_load=false "
      "--probe_compute=false");
  EXPECT_EQ(kv_code, 1) << kv_out;
  EXPECT_THAT(kv_out, HasSubstr("10.255.255.1:7070"));
  EXPECT_THAT(kv_out, HasSubstr("--insecure"));
}

class WorkerGrpcTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<testing::TestCerts> certs = testing::MakeTestCerts();
    ASSERT_TRUE(certs.ok()) << certs.status();
    certs_ = *std::move(certs);
  }
  void TearDown() override {
    if (worker_ != nullptr) {
      EXPECT_EQ(worker_->Terminate(), 0);
    }
    std::filesystem::remove_all(certs_.dir);
  }

  void Start(bool mutual) {
    std::vector<std::string> argv = {KRUL_WORKER_BIN,
                                     "--synthetic",
                                     "--host=127.0.0.1",
                                     "--http_port=0",
                                     "--grpc_port=0",
                                     "--probe_load=false",
                                     "--probe_compute=false",
                                     "--tls_cert_file=" + certs_.Cert("server"),
                                     "--tls_key_file=" + certs_.Key("server")};
    if (mutual) argv.push_back("--tls_client_ca_file=" + certs_.Cert("ca"));
    auto worker = testing::ChildProcess::Start(argv, "grpc listening on");
    ASSERT_TRUE(worker.ok()) << worker.status();
    worker_ = *std::move(worker);
    port_ = testing::PortFromLine(worker_->ready_line());
    ASSERT_GT(port_, 0) << worker_->ready_line();
  }

  // The status code of one Models call with `tls`.
  absl::StatusCode Models(const rpc::ClientTlsOptions& tls) {
    grpc::ChannelArguments args;
    auto creds = rpc::MakeChannelCredentials(tls, &args);
    EXPECT_TRUE(creds.ok()) << creds.status();
    if (!creds.ok()) return creds.status().code();
    auto stub = v1::Worker::NewStub(
        grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port_), *creds, args));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::ModelsResponse resp;
    grpc::Status s = stub->Models(&ctx, v1::ModelsRequest(), &resp);
    if (s.ok()) {
      EXPECT_GT(resp.models_size(), 0);
    }
    return static_cast<absl::StatusCode>(s.error_code());
  }
  rpc::ClientTlsOptions Tls(bool client_cert) const {
    rpc::ClientTlsOptions o;
    o.enabled = true;
    o.ca_file = certs_.Cert("ca");
    if (client_cert) {
      o.cert_file = certs_.Cert("client");
      o.key_file = certs_.Key("client");
    }
    return o;
  }

  testing::TestCerts certs_;
  std::unique_ptr<testing::ChildProcess> worker_;
  int port_ = 0;
};

TEST_F(WorkerGrpcTlsTest, ServesTlsAndRefusesPlaintextClients) {
  ASSERT_NO_FATAL_FAILURE(Start(/*mutual=*/false));
  EXPECT_EQ(Models(Tls(false)), absl::StatusCode::kOk);
  EXPECT_EQ(Models(rpc::ClientTlsOptions{}), absl::StatusCode::kUnavailable);
}

TEST_F(WorkerGrpcTlsTest, MutualTlsRequiresAClientCertificate) {
  ASSERT_NO_FATAL_FAILURE(Start(/*mutual=*/true));
  EXPECT_EQ(Models(Tls(false)), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Models(Tls(true)), absl::StatusCode::kOk);
}

}  // namespace
}  // namespace krul
