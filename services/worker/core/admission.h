// Bounded admission: at most `max_active` requests run (each holds one of
// the worker's engines), at most `max_queue` more wait for one; a request
// beyond that is turned away at once (HTTP 429 with Retry-After) instead of
// piling up threads and memory.
//
// Thread-safe.
#ifndef KRUL_SERVICES_WORKER_CORE_ADMISSION_H_
#define KRUL_SERVICES_WORKER_CORE_ADMISSION_H_

#include <cstdint>
#include <deque>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace krul::worker {

class Admission;

// An engine slot held by one request; released (and handed to the next
// waiter) when destroyed. Movable, not copyable.
class AdmissionTicket {
 public:
  AdmissionTicket() = default;
  AdmissionTicket(AdmissionTicket&& other) noexcept;
  AdmissionTicket& operator=(AdmissionTicket&& other) noexcept;
  ~AdmissionTicket();

  bool valid() const { return admission_ != nullptr; }
  // Index of the engine slot in [0, max_active).
  int slot() const { return slot_; }
  // How long the request waited for it.
  absl::Duration waited() const { return waited_; }
  void Release();

 private:
  friend class Admission;
  AdmissionTicket(Admission* admission, int slot, absl::Duration waited)
      : admission_(admission), slot_(slot), waited_(waited) {}
  Admission* admission_ = nullptr;
  int slot_ = -1;
  absl::Duration waited_;
};

class Admission {
 public:
  Admission(int max_active, int max_queue);
  ~Admission();  // all tickets must have been released

  // Takes a free slot, or waits (FIFO) until one frees up or `timeout`
  // passes. RESOURCE_EXHAUSTED when the queue is full (at once) or the wait
  // timed out; CANCELLED after Shutdown().
  absl::StatusOr<AdmissionTicket> Acquire(absl::Duration timeout);

  // Wakes every waiter with CANCELLED and rejects later calls.
  void Shutdown();

  // A suggested Retry-After in whole seconds (>= 1): the queue ahead times
  // the mean recent service time, spread over the slots.
  int RetryAfterSeconds() const;

  int active() const;
  int queued() const;
  int max_active() const { return max_active_; }

 private:
  friend class AdmissionTicket;
  void ReleaseSlot(int slot);

  const int max_active_;
  const int max_queue_;
  mutable absl::Mutex mu_;
  std::vector<int> free_slots_ ABSL_GUARDED_BY(mu_);
  uint64_t next_waiter_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<uint64_t> waiters_ ABSL_GUARDED_BY(mu_);  // FIFO; the front is served first
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  double mean_service_s_ ABSL_GUARDED_BY(mu_) = 1.0;
  std::vector<absl::Time> acquired_at_ ABSL_GUARDED_BY(mu_);
};

}  // namespace krul::worker

#endif  // KRUL_SERVICES_WORKER_CORE_ADMISSION_H_
