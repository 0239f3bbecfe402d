// Returns the kvstore's freed heap memory to the OS at an interval.
//
// The DRAM tier evicts small blocks (KV of short histories: tens of KB)
// while RocksDB write batches and gRPC messages come and go between them,
// so glibc's heap fills with free pages it never gives back: at a 256 MiB
// DRAM cap, 2 GiB written in 256 KiB versions left the process at 0.98 GiB
// (DRAM-only: 0.33). malloc_trim(0) releases every whole free page, not
// only the top of the heap: the same run stays at 0.40 GiB peak, 0.24 idle
// (krul-bench-kvstore-rss; docs/operations.md, "Memory").
//
// Thread-safe; the thread stops when the object is destroyed.
#ifndef KRUL_SERVICES_KVSTORE_MEMORY_TRIMMER_H_
#define KRUL_SERVICES_KVSTORE_MEMORY_TRIMMER_H_

#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace krul::kvstore {

class MemoryTrimmer {
 public:
  // Trims every `interval`; a zero or negative interval starts nothing.
  explicit MemoryTrimmer(absl::Duration interval);
  ~MemoryTrimmer();

  MemoryTrimmer(const MemoryTrimmer&) = delete;
  MemoryTrimmer& operator=(const MemoryTrimmer&) = delete;

 private:
  void Loop(absl::Duration interval);

  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace krul::kvstore

#endif  // KRUL_SERVICES_KVSTORE_MEMORY_TRIMMER_H_
