#include "load_stream.h"

#include <utility>

namespace krul {
namespace {

double Since(LoadStream::Clock::time_point t0) {
  return std::chrono::duration<double>(LoadStream::Clock::now() - t0).count();
}

}  // namespace

LoadStream::LoadStream(const RestorePlan& plan, KvSource* source, BackendKvCache& cache,
                       Clock::time_point start)
    : plan_(plan), source_(source), cache_(cache) {
  {
    absl::MutexLock lock(&mu_);
    loaded_through_ = plan.loads.empty() ? plan.n_layers - 1 : plan.loads[0].layer - 1;
  }
  totals_.finished = start;
  thread_ = std::thread([this] { Run(); });
}

LoadStream::~LoadStream() {
  {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void LoadStream::Run() {
  for (size_t i = 0; i < plan_.loads.size(); ++i) {
    const LoadStep& step = plan_.loads[i];
    {
      absl::MutexLock lock(&mu_);
      if (cancelled_) return;
    }
    const auto t0 = Clock::now();
    absl::StatusOr<size_t> bytes = source_->Fetch(step.write_layers, step.begin, step.end, cache_);
    // A device cache may still be copying: the step is done when it landed.
    absl::Status landed = bytes.ok() ? cache_.WaitForWrites() : bytes.status();
    const double seconds = Since(t0);
    if (!landed.ok()) {
      absl::MutexLock lock(&mu_);
      error_ = std::move(landed);
      return;
    }
    if (totals_.requests == 0) {
      totals_.first_seconds = seconds;
      totals_.first_bytes = *bytes;
    }
    totals_.busy_seconds += seconds;
    totals_.bytes += *bytes;
    totals_.planned_bytes += step.bytes;
    totals_.requests++;
    totals_.finished = Clock::now();
    absl::MutexLock lock(&mu_);
    loaded_through_ =
        i + 1 < plan_.loads.size() ? plan_.loads[i + 1].layer - 1 : plan_.n_layers - 1;
  }
}

absl::Status LoadStream::WaitForLayer(int layer) {
  absl::MutexLock lock(&mu_);
  auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return loaded_through_ >= layer || !error_.ok();
  };
  mu_.Await(absl::Condition(&ready));
  return error_;
}

LoadStream::Totals LoadStream::Join() {
  if (thread_.joinable()) thread_.join();
  return totals_;
}

}  // namespace krul
