#include "worker/core/admission.h"

#include <algorithm>
#include <cmath>

namespace krul::worker {

AdmissionTicket::AdmissionTicket(AdmissionTicket&& other) noexcept
    : admission_(other.admission_), slot_(other.slot_), waited_(other.waited_) {
  other.admission_ = nullptr;
}

AdmissionTicket& AdmissionTicket::operator=(AdmissionTicket&& other) noexcept {
  if (this != &other) {
    Release();
    admission_ = other.admission_;
    slot_ = other.slot_;
    waited_ = other.waited_;
    other.admission_ = nullptr;
  }
  return *this;
}

AdmissionTicket::~AdmissionTicket() { Release(); }

void AdmissionTicket::Release() {
  if (admission_ == nullptr) return;
  Admission* a = admission_;
  admission_ = nullptr;
  a->ReleaseSlot(slot_);
}

Admission::Admission(int max_active, int max_queue)
    : max_active_(std::max(1, max_active)), max_queue_(std::max(0, max_queue)) {
  absl::MutexLock lock(&mu_);
  for (int i = max_active_ - 1; i >= 0; --i) free_slots_.push_back(i);
  acquired_at_.assign(max_active_, absl::InfinitePast());
}

Admission::~Admission() = default;

absl::StatusOr<AdmissionTicket> Admission::Acquire(absl::Duration timeout) {
  const absl::Time start = absl::Now();
  absl::MutexLock lock(&mu_);
  if (shutdown_) return absl::CancelledError("the worker is shutting down");
  // Fast path: a free slot and nobody ahead.
  if (!free_slots_.empty() && waiters_.empty()) {
    const int slot = free_slots_.back();
    free_slots_.pop_back();
    acquired_at_[slot] = absl::Now();
    return AdmissionTicket(this, slot, absl::ZeroDuration());
  }
  if (static_cast<int>(waiters_.size()) >= max_queue_) {
    return absl::ResourceExhaustedError(
        "the worker is busy: every engine is in use and the request queue is full; retry later");
  }
  const uint64_t me = next_waiter_++;
  waiters_.push_back(me);
  auto my_turn = [this, me]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return shutdown_ || (!free_slots_.empty() && waiters_.front() == me);
  };
  const bool got = mu_.AwaitWithTimeout(absl::Condition(&my_turn), timeout);
  auto it = std::find(waiters_.begin(), waiters_.end(), me);
  if (it != waiters_.end()) waiters_.erase(it);
  if (shutdown_) return absl::CancelledError("the worker is shutting down");
  if (!got) {
    return absl::ResourceExhaustedError(
        "the worker is busy: the request waited too long for a free engine; retry later");
  }
  const int slot = free_slots_.back();
  free_slots_.pop_back();
  acquired_at_[slot] = absl::Now();
  return AdmissionTicket(this, slot, absl::Now() - start);
}

void Admission::ReleaseSlot(int slot) {
  absl::MutexLock lock(&mu_);
  const double held = absl::ToDoubleSeconds(absl::Now() - acquired_at_[slot]);
  // A slow-moving average: Retry-After is a hint, not a promise.
  if (std::isfinite(held) && held >= 0) mean_service_s_ = 0.8 * mean_service_s_ + 0.2 * held;
  free_slots_.push_back(slot);
}

void Admission::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutdown_ = true;
}

int Admission::RetryAfterSeconds() const {
  absl::MutexLock lock(&mu_);
  const double ahead = static_cast<double>(waiters_.size() + 1);
  const double seconds = ahead * mean_service_s_ / max_active_;
  return std::max(1, static_cast<int>(std::ceil(seconds)));
}

int Admission::active() const {
  absl::MutexLock lock(&mu_);
  return max_active_ - static_cast<int>(free_slots_.size());
}

int Admission::queued() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(waiters_.size());
}

}  // namespace krul::worker
