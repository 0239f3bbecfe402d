// The disaggregated testbed of deploy/local/testbed.sh for one krul-loadtest
// run: a storage and a compute network namespace joined by a veth pair that
// tc shapes to a rate (and a delay where the kernel has netem). This class
// only calls the script (`check`, `up`, `down`) and reads what `up` prints
// (KRUL_TB_* lines); the namespaces, addresses and shaping are the script's.
//
// Teardown is always the script's `down --name NAME`: from Down() (and the
// destructor), and from a watchdog process started with the testbed that
// runs it when krul-loadtest goes away without Down() (SIGKILL, a second
// Ctrl-C, a crash): it reads a pipe whose only writer is krul-loadtest and
// acts on end-of-file. The watchdog is in its own process group, so a
// Ctrl-C at the terminal does not reach it.
//
// Not thread-safe: one thread brings a testbed up and down.
#ifndef KRUL_LOADTEST_CLUSTER_TESTBED_H_
#define KRUL_LOADTEST_CLUSTER_TESTBED_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace krul::loadtest {

struct TestbedOptions {
  std::string script;                          // deploy/local/testbed.sh
  std::string name;                            // "krultb" + up to 6 [a-z0-9]; empty: from the pid
  double rate_gbit_per_s = 2;                  // the link's rate, both directions
  double delay_ms = 0;                         // one-way delay added on each end (needs tc netem)
  std::string log_path;                        // the script's stderr (appended)
  absl::Duration timeout = absl::Seconds(60);  // each call of the script
};

// What `up` applied (KRUL_TB_* of deploy/local/testbed.sh).
struct TestbedLink {
  std::string name;
  std::string storage_ns, compute_ns;      // network namespaces
  std::string storage_addr, compute_addr;  // their veth addresses
  std::string storage_dev, compute_dev;    // the veth ends
  std::string rate;                        // tc rate, e.g. "2000000kbit"
  double rate_bits_per_s = 0;
  double burst_bytes = 0;
  double delay_ms = 0;            // applied
  double delay_requested_ms = 0;  // asked; differs when the kernel has no netem
  bool netem = false;
};

class Testbed {
 public:
  // OK when namespaces can be made here (`testbed.sh check`).
  // FAILED_PRECONDITION carrying the script's reason (not root, no
  // iproute2, no veth or tc tbf); NOT_FOUND when the script is missing.
  static absl::Status Check(const std::string& script);

  // Brings the testbed up and starts its watchdog. INVALID_ARGUMENT for a
  // bad name or rate; FAILED_PRECONDITION when `check` fails; UNAVAILABLE
  // when `up` fails or prints no KRUL_TB_* lines (the message carries its
  // stderr); INTERNAL when pipe or fork fail (the testbed is then taken
  // down again).
  static absl::StatusOr<std::unique_ptr<Testbed>> Up(const TestbedOptions& options);
  ~Testbed();  // Down()s

  Testbed(const Testbed&) = delete;
  Testbed& operator=(const Testbed&) = delete;

  const TestbedLink& link() const { return link_; }

  // The argv prefixes that run a command on the storage / compute node:
  // `ip netns exec NS env UCX_TLS=tcp UCX_NET_DEVICES=DEV`. UCX is held to
  // TCP on the veth: both nodes share this machine's memory, and UCX's
  // shared-memory transports would bypass the link.
  std::vector<std::string> StoragePrefix() const;
  std::vector<std::string> ComputePrefix() const;

  // `testbed.sh down --name NAME` (it stops what still runs inside), then
  // ends the watchdog. INTERNAL when the script fails or a namespace is
  // still listed afterwards; bounded by the options' timeout. Call it from
  // the root network namespace (NetnsScope::Leave() first): `down` ends
  // every process inside the namespaces. Idempotent.
  absl::Status Down();

 private:
  Testbed() = default;

  TestbedOptions options_;
  TestbedLink link_;
  pid_t watchdog_pid_ = -1;
  int watchdog_fd_ = -1;  // the pipe's write end; closing it fires the watchdog
  bool down_ = false;
};

}  // namespace krul::loadtest

#endif  // KRUL_LOADTEST_CLUSTER_TESTBED_H_
