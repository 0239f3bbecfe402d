// krul-bench-reconnect: how soon a KvStoreClient uses a kvstore again after
// the store restarts (kill -9, down for --down, started again on the same
// port), with two channel settings side by side in one run:
//
//   before: reconnect backoff 100 ms growing to 2 s, 100 ms minimum connect
//           timeout, no background reconnection (the kvclient until this
//           change: a reconnection completed only at gRPC's 5 s backup poll)
//   now:    KvStoreClientOptions' defaults (20 ms growing to 250 ms, 2 s, and
//           keep_connected: channels polled and reconnected in the background)
//
// Each client polls Health every --poll with a single attempt (the worker's
// restore client also makes one attempt), so the figure is the time from the
// restarted store's "listening" line to the first call that succeeds.
//
//   krul-bench-reconnect --rounds=5 --down=1s
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "krul/kvclient/kvstore_client.h"
#include "storage/kvstore_child.h"

ABSL_FLAG(std::string, server_binary, KRUL_KVSTORE_BINARY, "krul-kvstore to run");
ABSL_FLAG(int, rounds, 5, "Restarts per down time");
ABSL_FLAG(std::vector<std::string>, down, std::vector<std::string>({"0.5s", "2s"}),
          "How long the store stays down before it restarts (one series per value)");
ABSL_FLAG(absl::Duration, poll, absl::Milliseconds(2), "Between Health polls");

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "krul-bench-reconnect: %s\n", what.c_str());
  std::exit(1);
}

// krul-kvstore on 127.0.0.1:`port` (0: ephemeral); returns once it listens.
// A DRAM-only krul-kvstore on a given port (0: ephemeral), and when it
// became ready.
class Server {
 public:
  explicit Server(int port) {
    auto child = krul::bench::KvStoreChild::Start(
        absl::GetFlag(FLAGS_server_binary),
        {"--tiers=dram", "--dram_capacity=64M", "--log_level=error"}, port);
    if (!child.ok()) Die("krul-kvstore did not start: " + child.status().ToString());
    ready_ = Clock::now();
    child_ = *std::move(child);
  }
  void Kill() { child_->Kill(); }
  int port() const { return child_->port(); }
  Clock::time_point ready() const { return ready_; }

 private:
  std::unique_ptr<krul::bench::KvStoreChild> child_;
  Clock::time_point ready_;
};

std::unique_ptr<krul::KvStoreClient> MakeClient(const std::string& address, bool before) {
  krul::KvStoreClientOptions o;
  o.addresses = {address};
  o.max_attempts = 1;
  o.rpc_timeout = absl::Milliseconds(200);
  if (before) {
    o.reconnect_backoff_initial = absl::Milliseconds(100);
    o.reconnect_backoff_max = absl::Seconds(2);
    o.connect_timeout = absl::Milliseconds(100);
    o.keep_connected = false;
  }
  auto c = krul::KvStoreClient::Create(o);
  if (!c.ok()) Die(c.status().ToString());
  return *std::move(c);
}

// Polls Health until it succeeds; returns when it first did.
Clock::time_point FirstSuccess(krul::KvStoreClient& client, const std::string& address) {
  const absl::Duration poll = absl::GetFlag(FLAGS_poll);
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  while (absl::Now() < give_up) {
    if (client.Health(address).ok()) return Clock::now();
    absl::SleepFor(poll);
  }
  Die("no successful call within 60 s");
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

}  // namespace

// One series: `rounds` restarts with only `client` in the process (gRPC's
// pollers are process-wide, so a second client would poll for this one).
std::vector<double> Series(Server* server_slot[], int port, const std::string& address, bool before,
                           absl::Duration down) {
  auto client = MakeClient(address, before);
  std::vector<double> ms;
  for (int round = 0; round < absl::GetFlag(FLAGS_rounds); ++round) {
    FirstSuccess(*client, address);  // Connected before the crash.
    server_slot[0]->Kill();
    // The client keeps calling while the store is down, as workers do.
    std::atomic<bool> stop{false};
    std::thread hammer([&] {
      while (!stop.load()) {
        client->Health(address).IgnoreError();
        absl::SleepFor(absl::GetFlag(FLAGS_poll));
      }
    });
    absl::SleepFor(down);  // The scenario: the store is down this long.
    stop = true;
    hammer.join();
    delete server_slot[0];
    server_slot[0] = new Server(port);
    const Clock::time_point ok = FirstSuccess(*client, address);
    ms.push_back(std::chrono::duration<double, std::milli>(ok - server_slot[0]->ready()).count());
    std::printf("%6.1f  %-6s  %5d  %8.0f\n", absl::ToDoubleSeconds(down), before ? "before" : "now",
                round, ms.back());
  }
  return ms;
}

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Reconnect time of the kvstore client after a store restart.");
  absl::ParseCommandLine(argc, argv);
  Server* server[1] = {new Server(0)};
  const int port = server[0]->port();
  const std::string address = absl::StrCat("127.0.0.1:", port);
  std::printf("down_s  client  round  reconnect_ms\n");
  for (const std::string& down_text : absl::GetFlag(FLAGS_down)) {
    absl::Duration down;
    if (!absl::ParseDuration(down_text, &down)) Die("bad --down " + down_text);
    std::vector<double> b = Series(server, port, address, /*before=*/true, down);
    std::vector<double> n = Series(server, port, address, /*before=*/false, down);
    std::printf(
        "down %.1f s: median before %.0f ms, now %.0f ms (%.1fx); max before %.0f ms, "
        "now %.0f ms\n",
        absl::ToDoubleSeconds(down), Median(b), Median(n),
        Median(n) > 0 ? Median(b) / Median(n) : 0.0, *std::max_element(b.begin(), b.end()),
        *std::max_element(n.begin(), n.end()));
  }
  delete server[0];
  return 0;
}
