// An injectable source of time. Code whose behaviour depends on elapsed time
// (leases, TTLs, put deadlines, queue timeouts) reads a Clock* instead of
// absl::Now(), so tests move time with FakeClock::Advance instead of
// sleeping.
//
//   Clock* clock = Clock::Real();        // production
//   FakeClock clock;  clock.Advance(absl::Seconds(31));   // tests
#ifndef KRUL_BASE_CLOCK_H_
#define KRUL_BASE_CLOCK_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace krul {

// Thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() = 0;

  // The process-wide wall clock (absl::Now()). Never deleted; do not delete.
  static Clock* Real();
};

// A clock that moves only when told to, starting at `start` (by default a
// fixed instant, so tests are deterministic). Thread-safe.
class FakeClock : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1'700'000'000)) : now_(start) {}
  absl::Time Now() override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  // Moves the clock forward by `d` (backward when `d` is negative).
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }
  void Set(absl::Time t) {
    absl::MutexLock lock(&mu_);
    now_ = t;
  }

 private:
  absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

inline Clock* Clock::Real() {
  class RealClock : public Clock {
   public:
    absl::Time Now() override { return absl::Now(); }
  };
  static RealClock* clock = new RealClock();
  return clock;
}

}  // namespace krul

#endif  // KRUL_BASE_CLOCK_H_
