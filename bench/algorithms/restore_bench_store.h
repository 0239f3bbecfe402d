// Where krul-bench-restore stores each mode's KV at turn end and reads it
// back during a restore: in memory (InProcessKvStore), or a krul-kvstore
// server started in the benchmark's own process and read the way the worker
// reads it (gRPC lookup, then one streamed UCX read of the blocks the plan
// loads). Sources are unpaced: the caller puts the emulated link on top
// (MakeLinkPacedKvSource).
#ifndef KRUL_BENCH_KRUL_RESTORE_BENCH_STORE_H_
#define KRUL_BENCH_KRUL_RESTORE_BENCH_STORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/compress/compressor.h"
#include "krul/restore/kv_source.h"
#include "krul/restore/restore_plan.h"

namespace krul::bench {

class BenchStore {
 public:
  virtual ~BenchStore() = default;
  // "in-process" or "kvstore-ucx (shm|tcp)".
  virtual std::string Name() const = 0;
  // Stores (or replaces) `kv` under `key`. The store's errors.
  virtual absl::Status Put(const std::string& key, CompressedKv kv) = 0;
  // A source over `key` for a restore that executes `loads` (empty: every
  // fetch is read on demand, as the start-up probe does). NOT_FOUND for an
  // unknown key; the store's errors.
  virtual absl::StatusOr<std::unique_ptr<KvSource>> Open(const std::string& key,
                                                         const std::vector<LoadStep>& loads) = 0;
  // NOT_FOUND for an unknown key; the store's errors.
  virtual absl::Status Erase(const std::string& key) = 0;
};

std::unique_ptr<BenchStore> NewInProcessBenchStore();

// A DRAM-only kvstore on 127.0.0.1 (ephemeral port, no metrics port) over
// UCX shared memory, or TCP on loopback with `tcp`, holding up to
// `capacity_bytes`; stopped when the store is destroyed. UNIMPLEMENTED in a
// build without the services (KRUL_ENGINE_ONLY); UCX and server start-up
// errors otherwise.
absl::StatusOr<std::unique_ptr<BenchStore>> StartKvstoreBenchStore(const KvShape& shape, bool tcp,
                                                                   uint64_t capacity_bytes);

}  // namespace krul::bench

#endif  // KRUL_BENCH_KRUL_RESTORE_BENCH_STORE_H_
