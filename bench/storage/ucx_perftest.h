// Runs UCX's own benchmark, `ucx_perftest` (Debian package ucx-utils), as a
// server and a client child process on 127.0.0.1 and reads its bandwidth:
// the reference that krul-bench-kvstore compares the KV store's UCX data
// plane with, on the same UCX transport and message size in the same run.
//
// Both processes get `env` (e.g. UCX_TLS=posix,self) on top of this
// process's environment. The server listens on an ephemeral TCP port (its
// out-of-band exchange; ucx_perftest binds every interface for the few
// seconds it runs); the client starts once that port is listening. Each run
// is bounded by `timeout`: whatever is still running then is killed.
//
// Errors: NOT_FOUND the binary is missing (not executable); UNAVAILABLE the
// server did not start listening, or the client did not finish in time;
// INTERNAL ucx_perftest failed or printed no "Final:" line (the message
// carries the end of its output).
#ifndef KRUL_BENCH_STORAGE_UCX_PERFTEST_H_
#define KRUL_BENCH_STORAGE_UCX_PERFTEST_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace krul::bench {

struct UcxPerftestRun {
  std::string binary = "ucx_perftest";                   // a path, or a name looked up in PATH
  std::string test;                                      // -t: "ucp_get", "tag_bw", ...
  uint64_t message_bytes = 0;                            // -s
  uint64_t iterations = 0;                               // -n
  uint64_t warmup_iterations = 0;                        // -w
  std::vector<std::pair<std::string, std::string>> env;  // e.g. {"UCX_TLS", "tcp"}
  absl::Duration timeout = absl::Seconds(60);
};

struct UcxPerftestResult {
  double gbps = 0;        // overall bandwidth of the "Final:" line, 1e9 bytes/s
  double latency_us = 0;  // its overall latency per iteration
  std::string final_line;
};

absl::StatusOr<UcxPerftestResult> RunUcxPerftest(const UcxPerftestRun& run);

// The "Final:" line of ucx_perftest's output as a result (exposed for
// tests). INTERNAL when there is none or it does not parse.
absl::StatusOr<UcxPerftestResult> ParseUcxPerftestOutput(const std::string& output);

}  // namespace krul::bench

#endif  // KRUL_BENCH_STORAGE_UCX_PERFTEST_H_
