// krul-stress-kill9: crash consistency of krul-kvstore under concurrent puts.
//
// Each round starts krul-kvstore (DRAM + RocksDB, write-through, 127.0.0.1,
// ephemeral port) on the same data directory, runs --writers threads that
// each put versions back to back (so --writers puts are in flight at once),
// sends SIGKILL to the store after a random delay, and waits for every
// writer to see its put fail. The next round (and a final restart) checks
// what the restarted store serves against what the writers were told:
//
//   acknowledged   the Put / CommitPut returned OK: must be served, and its
//                  blocks byte-exact (a lost or changed one is a violation);
//   not committed  failed before its commit was sent (BeginPut or the data
//                  transfer failed), or the store refused the commit with a
//                  definite error: must not be visible (a violation if it is);
//   in doubt       the commit was sent and no answer came back (the store
//                  died in between): may be absent or present, but if
//                  present it must be complete and byte-exact.
//
// Every check is also made over all rounds at the end, and the number of
// objects the store reports in RocksDB (Stats) must equal the versions known
// to be there (acknowledged + in-doubt-present): nothing else is visible.
//
// Half the puts are one unary Put (versions up to the client's inline
// limit), half go BeginPut -> data plane (inline gRPC stream, or UCX with
// --data_plane=ucx) -> CommitPut. Block bytes are regenerated from a seed
// per version, so nothing is kept in memory.
//
// Exit status: 0 when every round held, 1 on a violation, 2 on a setup
// error (the store did not start, bad flags). Run by tests/stress/kill9_puts.sh.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "krul/kvclient/kvstore_client.h"
#include "krul/kvformat/kv_block.h"
#include "krul/kvformat/manifest.h"
#include "krul/transport/ucx_transport.h"
#include "test_support/child_process.h"

ABSL_FLAG(std::string, kvstore_binary, KRUL_KVSTORE_BINARY, "krul-kvstore to run");
ABSL_FLAG(std::string, dir, "", "Work directory (the store's RocksDB goes to DIR/db); required");
ABSL_FLAG(int, rounds, 20, "Kill -9 rounds");
ABSL_FLAG(int, writers, 200, "Concurrent writer threads (puts in flight)");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the kill points and the version shapes");
ABSL_FLAG(absl::Duration, kill_after_min, absl::Milliseconds(300), "Earliest kill point");
ABSL_FLAG(absl::Duration, kill_after_max, absl::Seconds(4), "Latest kill point");
ABSL_FLAG(int, max_blocks, 4, "Blocks per version: 1..max_blocks");
ABSL_FLAG(int, max_block_kib, 64, "Payload per block: 1 KiB..max_block_kib KiB (random)");
ABSL_FLAG(std::string, data_plane, "grpc", "Data plane of the staged puts: grpc or ucx");
ABSL_FLAG(std::string, server_args, "",
          "Extra krul-kvstore flags, space-separated (e.g. --dram_capacity=64M)");

namespace krul::stress {
namespace {

using testing::ChildProcess;

constexpr char kTenant[] = "stress";
constexpr char kReady[] = "krul-kvstore listening on ";

enum class Outcome : uint8_t { kNotCommitted, kInDoubt, kAcked };

// One put a writer attempted: enough to rebuild its bytes and judge it.
struct Record {
  std::string conversation_id;
  uint64_t seed = 0;
  Outcome outcome = Outcome::kNotCommitted;
};

// A version's manifest and encoded blocks, from its seed alone.
struct Version {
  v1::Manifest manifest;
  std::vector<std::string> blocks;
};

Version MakeVersion(const std::string& conversation_id, uint64_t seed) {
  Version v;
  std::mt19937_64 rng(seed);
  const int n_blocks =
      1 + static_cast<int>(rng() % static_cast<uint64_t>(absl::GetFlag(FLAGS_max_blocks)));
  const uint64_t max_payload = uint64_t(absl::GetFlag(FLAGS_max_block_kib)) << 10;
  const uint32_t n_layers = 8;
  v1::ConversationKey* key = v.manifest.mutable_key();
  key->set_tenant(kTenant);
  key->set_conversation_id(conversation_id);
  key->set_turn(1);
  v.manifest.set_model_id("stress-kill9");
  v.manifest.set_n_layers(n_layers);
  v.manifest.set_plan(absl::StrCat("seed-", seed));
  for (int i = 0; i < n_blocks; ++i) {
    const size_t payload_bytes = 1024 + rng() % (max_payload - 1024 + 1);
    std::string payload(payload_bytes, '\0');
    for (size_t j = 0; j < payload_bytes; j += 8) {
      const uint64_t r = rng();
      for (size_t k = 0; k < 8 && j + k < payload_bytes; ++k) {
        payload[j + k] = static_cast<char>(r >> (8 * k));
      }
    }
    BlockHeader h;
    h.dtype = BlockDType::kU8;
    h.layout = BlockLayout::kRaw;
    h.rank = 1;
    h.layer = static_cast<uint32_t>(i) % n_layers;
    h.token_begin = 0;
    h.dims[0] = static_cast<uint32_t>(payload_bytes);
    absl::StatusOr<std::string> enc = EncodeBlock(h, payload);
    absl::StatusOr<v1::BlockRef> ref =
        enc.ok() ? MakeBlockRef(static_cast<uint32_t>(i), *enc) : enc.status();
    if (!ref.ok()) {
      std::fprintf(stderr, "krul-stress-kill9: cannot encode a block: %s\n",
                   ref.status().ToString().c_str());
      std::exit(2);
    }
    *v.manifest.add_blocks() = *std::move(ref);
    v.blocks.push_back(*std::move(enc));
  }
  return v;
}

std::chrono::system_clock::time_point Deadline(absl::Duration d) {
  return absl::ToChronoTime(absl::Now() + d);
}

absl::Status FromGrpc(const grpc::Status& s) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

// A store refusing a commit with one of these did not commit it; any other
// failure of a sent commit (the store died) leaves it in doubt.
bool DefinitelyNotCommitted(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kUnauthenticated:
      return true;
    default:
      return false;
  }
}

// Puts `v` with no retries, staged (BeginPut, data plane, CommitPut) or as
// one unary Put, and says how far it got.
Outcome PutOnce(KvStoreClient& client, BlockTransport& plane, const std::string& address,
                const Version& v, bool staged, absl::Status* error) {
  v1::KvStore::StubInterface& stub = client.StubFor(address);
  if (!staged) {
    v1::PutRequest req;
    *req.mutable_manifest() = v.manifest;
    for (const std::string& b : v.blocks) req.add_blocks(b);
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(absl::Seconds(20)));
    v1::PutResponse resp;
    *error = FromGrpc(stub.Put(&ctx, req, &resp));
    if (error->ok()) return Outcome::kAcked;
    return DefinitelyNotCommitted(error->code()) ? Outcome::kNotCommitted : Outcome::kInDoubt;
  }
  v1::BeginPutRequest begin;
  *begin.mutable_key() = v.manifest.key();
  for (const std::string& b : v.blocks) begin.add_block_sizes(b.size());
  begin.set_transport(std::string(plane.name()));
  v1::BeginPutResponse reservation;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(absl::Seconds(20)));
    *error = FromGrpc(stub.BeginPut(&ctx, begin, &reservation));
    if (!error->ok()) return Outcome::kNotCommitted;
  }
  std::vector<std::string_view> views(v.blocks.begin(), v.blocks.end());
  *error = plane.Write(stub, address, reservation, views, absl::Now() + absl::Seconds(20));
  if (!error->ok()) return Outcome::kNotCommitted;
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(absl::Seconds(20)));
  v1::CommitPutRequest commit;
  commit.set_put_id(reservation.put_id());
  *commit.mutable_manifest() = v.manifest;
  v1::CommitPutResponse resp;
  *error = FromGrpc(stub.CommitPut(&ctx, commit, &resp));
  if (error->ok()) return Outcome::kAcked;
  return DefinitelyNotCommitted(error->code()) ? Outcome::kNotCommitted : Outcome::kInDoubt;
}

struct Counts {
  int64_t acked = 0, acked_verified = 0, acked_lost = 0, acked_corrupt = 0;
  int64_t not_committed = 0, not_committed_visible = 0;
  int64_t in_doubt = 0, in_doubt_present = 0, in_doubt_absent = 0, in_doubt_corrupt = 0;
  int64_t read_errors = 0;

  int64_t violations() const {
    return acked_lost + acked_corrupt + not_committed_visible + in_doubt_corrupt + read_errors;
  }
  // Versions that must be in the store afterwards.
  int64_t present() const { return acked_verified + acked_corrupt + in_doubt_present; }
  void Add(const Counts& o) {
    acked += o.acked, acked_verified += o.acked_verified, acked_lost += o.acked_lost;
    acked_corrupt += o.acked_corrupt, not_committed += o.not_committed;
    not_committed_visible += o.not_committed_visible, in_doubt += o.in_doubt;
    in_doubt_present += o.in_doubt_present, in_doubt_absent += o.in_doubt_absent;
    in_doubt_corrupt += o.in_doubt_corrupt, read_errors += o.read_errors;
  }
  std::string ToString() const {
    return absl::StrCat("acknowledged ", acked, " verified ", acked_verified, " lost ", acked_lost,
                        " corrupt ", acked_corrupt, " | not-committed ", not_committed, " visible ",
                        not_committed_visible, " | in-doubt ", in_doubt, " present ",
                        in_doubt_present, " absent ", in_doubt_absent, " corrupt ",
                        in_doubt_corrupt, " | read-errors ", read_errors);
  }
};

// Looks every record up on the restarted store and judges it (see the file
// comment). Unexpected read failures count as violations too.
Counts Verify(KvStoreClient& client, const std::vector<Record>& records) {
  Counts c;
  for (const Record& r : records) {
    v1::ConversationKey key;
    key.set_tenant(kTenant);
    key.set_conversation_id(r.conversation_id);
    key.set_turn(1);
    absl::StatusOr<v1::Manifest> m = client.Lookup(key);
    bool present = false, exact = false;
    if (m.ok()) {
      present = true;
      absl::StatusOr<std::vector<std::string>> data = client.ReadAll(*m);
      if (data.ok()) {
        const Version v = MakeVersion(r.conversation_id, r.seed);
        exact = *data == v.blocks && m->blocks_size() == v.manifest.blocks_size();
        for (int i = 0; exact && i < m->blocks_size(); ++i) {
          exact = m->blocks(i).payload_xxh3() == v.manifest.blocks(i).payload_xxh3();
        }
      }
    } else if (m.status().code() != absl::StatusCode::kNotFound) {
      std::fprintf(stderr, "krul-stress-kill9: lookup %s: %s\n", r.conversation_id.c_str(),
                   m.status().ToString().c_str());
      ++c.read_errors;
      continue;
    }
    switch (r.outcome) {
      case Outcome::kAcked:
        ++c.acked;
        if (!present) {
          ++c.acked_lost;
          std::fprintf(stderr, "krul-stress-kill9: LOST acknowledged %s\n",
                       r.conversation_id.c_str());
        } else if (!exact) {
          ++c.acked_corrupt;
          std::fprintf(stderr, "krul-stress-kill9: CORRUPT acknowledged %s\n",
                       r.conversation_id.c_str());
        } else {
          ++c.acked_verified;
        }
        break;
      case Outcome::kNotCommitted:
        ++c.not_committed;
        if (present) {
          ++c.not_committed_visible;
          std::fprintf(stderr, "krul-stress-kill9: VISIBLE uncommitted %s\n",
                       r.conversation_id.c_str());
        }
        break;
      case Outcome::kInDoubt:
        ++c.in_doubt;
        if (!present) {
          ++c.in_doubt_absent;
        } else if (!exact) {
          ++c.in_doubt_corrupt;
          std::fprintf(stderr, "krul-stress-kill9: CORRUPT in-doubt %s\n",
                       r.conversation_id.c_str());
        } else {
          ++c.in_doubt_present;
        }
        break;
    }
  }
  return c;
}

class Store {
 public:
  // Starts krul-kvstore on DIR/db; exits with 2 when it does not come up.
  static std::unique_ptr<Store> Start(const std::string& dir, bool ucx) {
    std::vector<std::string> argv = {absl::GetFlag(FLAGS_kvstore_binary), "--host=127.0.0.1",
                                     "--port=0", "--metrics_port=-1",
                                     "--rocksdb_path=" + dir + "/db"};
    if (ucx) argv.push_back("--ucx");
    for (absl::string_view a :
         absl::StrSplit(absl::GetFlag(FLAGS_server_args), ' ', absl::SkipEmpty())) {
      argv.emplace_back(a);
    }
    absl::StatusOr<std::unique_ptr<ChildProcess>> p =
        ChildProcess::Start(argv, kReady, absl::Seconds(120));
    if (!p.ok()) {
      std::fprintf(stderr, "krul-stress-kill9: krul-kvstore did not start: %s\n",
                   p.status().ToString().c_str());
      std::exit(2);
    }
    auto s = std::unique_ptr<Store>(new Store);
    s->process_ = *std::move(p);
    s->address_ = absl::StrCat("127.0.0.1:", testing::PortFromLine(s->process_->ready_line()));
    return s;
  }
  const std::string& address() const { return address_; }
  void Kill() { process_->Kill(); }
  int Terminate() { return process_->Terminate(absl::Seconds(60)); }

 private:
  Store() = default;
  std::unique_ptr<ChildProcess> process_;
  std::string address_;
};

std::unique_ptr<KvStoreClient> Connect(const std::string& address,
                                       std::shared_ptr<BlockTransport> plane) {
  KvStoreClientOptions o;
  o.addresses = {address};
  o.rpc_timeout = absl::Seconds(20);
  o.block_transport = std::move(plane);
  absl::StatusOr<std::unique_ptr<KvStoreClient>> c = KvStoreClient::Create(std::move(o));
  if (!c.ok()) {
    std::fprintf(stderr, "krul-stress-kill9: client: %s\n", c.status().ToString().c_str());
    std::exit(2);
  }
  return *std::move(c);
}

// The store's RocksDB object count (Stats), or -1.
int64_t RocksDbObjects(KvStoreClient& client, const std::string& address) {
  absl::StatusOr<v1::StatsResponse> s = client.Stats(address);
  if (!s.ok()) return -1;
  for (const v1::TierStats& t : s->tiers()) {
    if (t.tier() == "rocksdb") return static_cast<int64_t>(t.objects());
  }
  return -1;
}

int Run() {
  const std::string dir = absl::GetFlag(FLAGS_dir);
  const int rounds = absl::GetFlag(FLAGS_rounds);
  const int writers = absl::GetFlag(FLAGS_writers);
  const std::string data_plane = absl::GetFlag(FLAGS_data_plane);
  if (dir.empty() || rounds < 1 || writers < 1 || absl::GetFlag(FLAGS_max_blocks) < 1 ||
      absl::GetFlag(FLAGS_max_block_kib) < 1 ||
      absl::GetFlag(FLAGS_kill_after_max) < absl::GetFlag(FLAGS_kill_after_min) ||
      (data_plane != "grpc" && data_plane != "ucx")) {
    std::fprintf(stderr, "krul-stress-kill9: bad flags (see --help)\n");
    return 2;
  }
  const bool ucx = data_plane == "ucx";
  std::unique_ptr<Transport> ucx_transport;
  if (ucx) {
    absl::StatusOr<std::unique_ptr<Transport>> t = NewUcxTransport();
    if (!t.ok()) {
      std::fprintf(stderr, "krul-stress-kill9: UCX: %s\n", t.status().ToString().c_str());
      return 2;
    }
    ucx_transport = *std::move(t);
  }
  std::mt19937_64 rng(absl::GetFlag(FLAGS_seed));
  const int64_t kill_min_us = absl::ToInt64Microseconds(absl::GetFlag(FLAGS_kill_after_min));
  const int64_t kill_max_us = absl::ToInt64Microseconds(absl::GetFlag(FLAGS_kill_after_max));

  std::vector<std::vector<Record>> all_rounds;
  Counts total;
  std::printf(
      "krul-stress-kill9: %d rounds, %d writers, data plane %s (staged puts), kill after "
      "%s..%s\n",
      rounds, writers, data_plane.c_str(),
      absl::FormatDuration(absl::GetFlag(FLAGS_kill_after_min)).c_str(),
      absl::FormatDuration(absl::GetFlag(FLAGS_kill_after_max)).c_str());
  for (int round = 0; round <= rounds; ++round) {
    std::unique_ptr<Store> store = Store::Start(dir, ucx);
    std::shared_ptr<BlockTransport> plane(ucx ? NewUcxBlockTransport(ucx_transport.get())
                                              : NewGrpcBlockTransport());
    std::unique_ptr<KvStoreClient> client = Connect(store->address(), plane);
    if (round > 0) {
      const Counts c = Verify(*client, all_rounds.back());
      total.Add(c);
      std::printf("round %2d: %s\n", round, c.ToString().c_str());
      std::fflush(stdout);
    }
    if (round == rounds) {
      // Everything once more, and nothing else in the store.
      Counts again;
      for (const std::vector<Record>& r : all_rounds) again.Add(Verify(*client, r));
      const int64_t objects = RocksDbObjects(*client, store->address());
      std::printf("total:    %s\n", total.ToString().c_str());
      std::printf(
          "recheck of all rounds after the last restart: %s\nstore objects (rocksdb) %lld, "
          "expected %lld\n",
          again.ToString().c_str(), static_cast<long long>(objects),
          static_cast<long long>(again.present()));
      const bool ok = total.violations() == 0 && again.violations() == 0 &&
                      objects == again.present() && total.acked > 0;
      std::printf(
          "krul-stress-kill9: %s: %lld acknowledged puts verified byte-exact, "
          "%lld unacknowledged visible, %lld in doubt (%lld of them committed)\n",
          ok ? "PASS" : "FAIL", static_cast<long long>(total.acked_verified),
          static_cast<long long>(total.not_committed_visible),
          static_cast<long long>(total.in_doubt), static_cast<long long>(total.in_doubt_present));
      if (store->Terminate() != 0) {
        std::printf("krul-stress-kill9: the store did not stop cleanly on SIGTERM\n");
        return 1;
      }
      return ok ? 0 : 1;
    }

    // Writers put back to back until their first failure (the kill).
    std::vector<std::vector<Record>> per_writer(static_cast<size_t>(writers));
    std::atomic<int> in_flight{0};
    std::atomic<int64_t> acked{0};
    std::vector<std::thread> threads;
    const uint64_t round_seed = rng();
    for (int w = 0; w < writers; ++w) {
      threads.emplace_back([&, w] {
        for (uint64_t seq = 0;; ++seq) {
          Record r;
          r.conversation_id = absl::StrCat("r", round, "-w", w, "-", seq);
          r.seed = round_seed ^ (uint64_t(w) << 40) ^ seq;
          const Version v = MakeVersion(r.conversation_id, r.seed);
          absl::Status error;
          in_flight.fetch_add(1);
          r.outcome = PutOnce(*client, *plane, store->address(), v, (w + seq) % 2 == 0, &error);
          in_flight.fetch_sub(1);
          per_writer[static_cast<size_t>(w)].push_back(r);
          if (r.outcome == Outcome::kAcked) {
            acked.fetch_add(1);
          } else {
            return;
          }
        }
      });
    }
    const absl::Duration kill_after = absl::Microseconds(
        kill_min_us + static_cast<int64_t>(rng() % uint64_t(kill_max_us - kill_min_us + 1)));
    absl::SleepFor(kill_after);
    const int64_t acked_at_kill = acked.load();
    const int in_flight_at_kill = in_flight.load();
    store->Kill();
    for (std::thread& t : threads) t.join();
    std::vector<Record> records;
    for (std::vector<Record>& v : per_writer) records.insert(records.end(), v.begin(), v.end());
    std::printf("round %2d: kill -9 after %s with %d puts in flight, %lld acknowledged before\n",
                round + 1, absl::FormatDuration(kill_after).c_str(), in_flight_at_kill,
                static_cast<long long>(acked_at_kill));
    std::fflush(stdout);
    all_rounds.push_back(std::move(records));
  }
  return 1;  // not reached
}

}  // namespace
}  // namespace krul::stress

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Kill -9 krul-kvstore during concurrent puts, restart it, and check that every "
      "acknowledged put is served byte-exact and nothing unacknowledged is visible.\n"
      "  krul-stress-kill9 --dir=/tmp/k9 [--rounds=20] [--writers=200] [--seed=N]");
  absl::ParseCommandLine(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  return krul::stress::Run();
}
