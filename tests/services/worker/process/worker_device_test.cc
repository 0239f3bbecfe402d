// krul-worker's --device flag, as a process: --help lists it, an unknown
// device is refused, --device=cuda on a machine without a usable GPU (CI)
// exits with a clear error instead of crashing, and --device=cpu serves.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>
#include <vector>

#include "client/chat_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "krul/engine/backend_factory.h"
#include "test_support/child_process.h"
#include "test_support/shell.h"

namespace krul {
namespace {

using ::testing::HasSubstr;

struct WorkerRun {
  int exit_code = -1;  // -1: did not exit normally (a signal, a crash)
  std::string output;  // stdout and stderr
};

// Runs krul-worker with `args` to completion (bounded by `timeout`, which
// kills it) and collects its output.
WorkerRun RunWorker(const std::string& args) {
  const krul::testing::ShellResult r = krul::testing::RunShell(
      std::string("timeout --signal=KILL 60 ") + KRUL_WORKER_BIN + " " + args);
  return {r.exit_code, r.output};
}

TEST(WorkerDeviceTest, HelpListsTheDeviceFlag) {
  const WorkerRun run = RunWorker("--help");
  EXPECT_THAT(run.output, HasSubstr("--device"));
  EXPECT_THAT(run.output, HasSubstr("cpu or cuda"));
}

TEST(WorkerDeviceTest, AnUnknownDeviceIsRefused) {
  const WorkerRun run = RunWorker("--device=tpu --synthetic --http_port=0");
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_THAT(run.output, HasSubstr("unknown device 'tpu'"));
}

TEST(WorkerDeviceTest, CudaWithoutAUsableGpuExitsWithAClearError) {
  if (ResolveDevice(Device::kAuto).value_or(Device::kCpu) == Device::kCuda) {
    GTEST_SKIP() << "a CUDA device is usable here: --device=cuda would serve";
  }
  const WorkerRun run = RunWorker("--device=cuda --synthetic --http_port=0 --probe_load=false");
  // Exit code 1 with the reason, not a crash (which exits by a signal).
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_THAT(run.output, HasSubstr("FAILED_PRECONDITION: device=cuda: CUDA was requested"));
  EXPECT_THAT(run.output, ::testing::Not(HasSubstr("listening on")));
}

TEST(WorkerDeviceTest, CpuServes) {
  auto worker =
      testing::ChildProcess::Start({KRUL_WORKER_BIN, "--device=cpu", "--synthetic",
                                    "--host=127.0.0.1", "--http_port=0", "--probe_load=false"},
                                   "krul-worker listening on");
  ASSERT_TRUE(worker.ok()) << worker.status();
  const int port = testing::PortFromLine((*worker)->ready_line());
  ASSERT_GT(port, 0);
  worker::ChatClient client("127.0.0.1", port);
  EXPECT_EQ(client.Get("/readyz").first, 200);
  EXPECT_EQ((*worker)->Terminate(), 0);
}

}  // namespace
}  // namespace krul
