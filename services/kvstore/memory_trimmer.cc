#include "kvstore/memory_trimmer.h"

#include <malloc.h>

namespace krul::kvstore {

MemoryTrimmer::MemoryTrimmer(absl::Duration interval) {
  if (interval > absl::ZeroDuration()) thread_ = std::thread([this, interval] { Loop(interval); });
}

MemoryTrimmer::~MemoryTrimmer() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void MemoryTrimmer::Loop(absl::Duration interval) {
  absl::MutexLock lock(&mu_);
  while (!mu_.AwaitWithTimeout(absl::Condition(&stop_), interval)) {
    mu_.Unlock();
    malloc_trim(0);  // outside the lock: it can take milliseconds on a large heap
    mu_.Lock();
  }
}

}  // namespace krul::kvstore
