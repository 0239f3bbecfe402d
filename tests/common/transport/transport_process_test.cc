// Cross-process tests of the UCX transport: the server half runs in a child
// process (krul_transport_test_peer), as the kvstore would, and the test is
// the client. Over UCX's own choice (shared memory between processes) and
// with TCP forced onto loopback.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "common/transport/transport_test_pattern.h"
#include "gtest/gtest.h"
#include "krul/transport/transport.h"
#include "krul/transport/ucx_transport.h"

extern char** environ;

namespace krul {
namespace {

using krul::testing::FillPattern;

constexpr size_t kMiB = 1024 * 1024;

// The child process and its command pipes. Every read is bounded in time.
class ChildPeer {
 public:
  ~ChildPeer() { Kill(); }

  ::testing::AssertionResult Start(const std::string& wire, size_t bytes, uint64_t seed) {
    int to_child[2], from_child[2];
    if (pipe2(to_child, O_CLOEXEC) != 0 || pipe2(from_child, O_CLOEXEC) != 0) {
      return ::testing::AssertionFailure() << "pipe failed";
    }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, to_child[0], 0);
    posix_spawn_file_actions_adddup2(&actions, from_child[1], 1);
    const std::string path = KRUL_TRANSPORT_TEST_PEER;
    std::vector<std::string> args = {path, wire, std::to_string(bytes), std::to_string(seed)};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int rc = posix_spawn(&pid_, path.c_str(), &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    close(to_child[0]);
    close(from_child[1]);
    to_child_ = to_child[1];
    from_child_ = from_child[0];
    if (rc != 0) {
      pid_ = -1;
      return ::testing::AssertionFailure() << "cannot start " << path << ": " << strerror(rc);
    }
    std::string line;
    if (!ReadLine(&line) || line.rfind("ADDR ", 0) != 0) {
      return ::testing::AssertionFailure() << "peer said: " << line;
    }
    address_ = absl::HexStringToBytes(line.substr(5));
    if (!ReadLine(&line) || line.rfind("DESC ", 0) != 0) {
      return ::testing::AssertionFailure() << "peer said: " << line;
    }
    descriptor_ = absl::HexStringToBytes(line.substr(5));
    return ::testing::AssertionSuccess();
  }

  // Sends a command and returns the reply line ("" on timeout or EOF).
  std::string Command(const std::string& command) {
    const std::string text = command + "\n";
    if (write(to_child_, text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
      return "";
    }
    std::string line;
    ReadLine(&line);
    return line;
  }

  void Kill() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
    if (to_child_ >= 0) close(to_child_);
    if (from_child_ >= 0) close(from_child_);
    to_child_ = from_child_ = -1;
  }

  const std::string& address() const { return address_; }
  const std::string& descriptor() const { return descriptor_; }

 private:
  bool ReadLine(std::string* line) {
    line->clear();
    char c;
    while (true) {
      pollfd fd{from_child_, POLLIN, 0};
      if (poll(&fd, 1, 20000) <= 0) return false;  // 20 s: a wedged child fails the test
      if (read(from_child_, &c, 1) != 1) return false;
      if (c != '\n') {
        line->push_back(c);
      } else if (!line->empty() && (*line)[0] == '[') {
        line->clear();  // a UCX log line (UCX logs to stdout by default)
      } else {
        return true;
      }
    }
  }

  pid_t pid_ = -1;
  int to_child_ = -1;
  int from_child_ = -1;
  std::string address_;
  std::string descriptor_;
};

class TransportProcessTest : public ::testing::TestWithParam<std::string> {
 protected:
  void Connect(size_t bytes, uint64_t seed) {
    ASSERT_TRUE(peer_.Start(GetParam(), bytes, seed));
    UcxTransportOptions options;
    options.force_tcp = GetParam() == "tcp";
    auto transport = NewUcxTransport(options);
    ASSERT_TRUE(transport.ok()) << transport.status();
    client_ = *std::move(transport);
    buffer_.assign(bytes, 0);
    auto local = client_->RegisterRegion(buffer_.data(), bytes);
    ASSERT_TRUE(local.ok()) << local.status();
    local_ = *std::move(local);
    auto endpoint = client_->Connect(peer_.address());
    ASSERT_TRUE(endpoint.ok()) << endpoint.status();
    endpoint_ = *std::move(endpoint);
    auto remote = endpoint_->ImportRegion(peer_.descriptor());
    ASSERT_TRUE(remote.ok()) << remote.status();
    remote_ = *std::move(remote);
  }

  void TearDown() override {
    remote_.reset();
    endpoint_.reset();
    local_.reset();
    client_.reset();
  }

  ChildPeer peer_;
  std::unique_ptr<Transport> client_;
  std::vector<uint8_t> buffer_;
  std::unique_ptr<MemoryRegion> local_;
  std::unique_ptr<Endpoint> endpoint_;
  std::unique_ptr<RemoteRegion> remote_;
};

TEST_P(TransportProcessTest, ReadsAndWritesTheOtherProcessesMemory) {
  constexpr size_t kBytes = 16 * kMiB;
  ASSERT_NO_FATAL_FAILURE(Connect(kBytes, 1));
  const TransferSegment whole{0, 0, kBytes};
  ASSERT_TRUE(TransferSync(*client_, TransferOp::kRead, *local_, *remote_, std::span(&whole, 1),
                           absl::Seconds(30))
                  .ok());
  std::vector<uint8_t> expected(kBytes);
  FillPattern(expected.data(), kBytes, 1);
  EXPECT_EQ(std::memcmp(buffer_.data(), expected.data(), kBytes), 0);

  // Write a 3 MiB pattern at offset 5 MiB + 3 and let the peer check it.
  FillPattern(buffer_.data(), 3 * kMiB, 2);
  const TransferSegment part{0, 5 * kMiB + 3, 3 * kMiB};
  ASSERT_TRUE(TransferSync(*client_, TransferOp::kWrite, *local_, *remote_, std::span(&part, 1),
                           absl::Seconds(30))
                  .ok());
  EXPECT_EQ(
      peer_.Command("CHECK 2 " + std::to_string(5 * kMiB + 3) + " " + std::to_string(3 * kMiB)),
      "OK");
  // The bytes before it still hold the original pattern.
  EXPECT_EQ(peer_.Command("CHECK 1 0 " + std::to_string(5 * kMiB)), "OK");
  EXPECT_EQ(peer_.Command("EXIT"), "");
}

TEST_P(TransportProcessTest, PipelinedLayerReadsAcrossProcesses) {
  constexpr int kLayers = 16;
  constexpr size_t kBlock = kMiB;
  ASSERT_NO_FATAL_FAILURE(Connect(kLayers * kBlock, 3));
  std::vector<std::unique_ptr<Transfer>> layers;
  for (int l = 0; l < kLayers; ++l) {
    const TransferSegment segment{l * kBlock, l * kBlock, kBlock};
    auto t = client_->PrepareTransfer(TransferOp::kRead, *local_, *remote_, std::span(&segment, 1));
    ASSERT_TRUE(t.ok()) << t.status();
    layers.push_back(*std::move(t));
  }
  for (auto& t : layers) ASSERT_TRUE(t->Post().ok());
  std::vector<uint8_t> expected(kLayers * kBlock);
  FillPattern(expected.data(), expected.size(), 3);
  for (int l = 0; l < kLayers; ++l) {
    ASSERT_TRUE(layers[l]->Wait(absl::Seconds(30)).ok()) << "layer " << l;
    ASSERT_EQ(std::memcmp(&buffer_[l * kBlock], &expected[l * kBlock], kBlock), 0) << l;
  }
}

TEST_P(TransportProcessTest, ADeadPeerFailsTransfersInsteadOfHanging) {
  if (GetParam() != "tcp") {
    GTEST_SKIP() << "over shared memory a dead peer's mapping stays readable and UCX notices "
                    "the death only after its keepalive interval (20 s by default)";
  }
  ASSERT_NO_FATAL_FAILURE(Connect(kMiB, 4));
  const TransferSegment segment{0, 0, kMiB};
  ASSERT_TRUE(TransferSync(*client_, TransferOp::kRead, *local_, *remote_, std::span(&segment, 1),
                           absl::Seconds(30))
                  .ok());
  peer_.Kill();
  // The connection reset reaches UCX quickly; either Post or Wait reports it.
  absl::Status status;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  do {
    status = TransferSync(*client_, TransferOp::kRead, *local_, *remote_, std::span(&segment, 1),
                          absl::Seconds(20));
  } while (status.ok() && absl::Now() < deadline);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_EQ(endpoint_->status().code(), absl::StatusCode::kUnavailable);
}

INSTANTIATE_TEST_SUITE_P(Wires, TransportProcessTest, ::testing::Values("shm", "tcp"),
                         [](const auto& param_info) { return param_info.param; });

}  // namespace
}  // namespace krul
