#include "channel_watcher.h"

#include <chrono>
#include <utility>

namespace krul::kvclient_internal {
namespace {

// How long one watch waits before it looks again (and asks an idle channel
// to connect); also the most the destructor waits.
constexpr std::chrono::milliseconds kWatchPeriod(200);

}  // namespace

ChannelWatcher::~ChannelWatcher() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  // Pending watches finish by their deadline; Next then returns false.
  cq_.Shutdown();
  if (thread_.joinable()) thread_.join();
}

void ChannelWatcher::Watch(std::shared_ptr<grpc::Channel> channel) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return;
  watched_.push_back(std::make_unique<Watched>(Watched{std::move(channel)}));
  Arm(watched_.back().get());
  if (!thread_.joinable()) thread_ = std::thread([this] { Loop(); });
}

void ChannelWatcher::Arm(Watched* w) {
  // try_to_connect: an idle channel (after a failure and its backoff) starts
  // its next attempt now rather than at the next call.
  const grpc_connectivity_state state = w->channel->GetState(/*try_to_connect=*/true);
  w->channel->NotifyOnStateChange(state, std::chrono::system_clock::now() + kWatchPeriod, &cq_, w);
}

void ChannelWatcher::Loop() {
  void* tag = nullptr;
  bool changed = false;
  while (cq_.Next(&tag, &changed)) {
    absl::MutexLock lock(&mu_);
    if (stopping_) continue;  // Drain: Next returns false once all are done.
    Arm(static_cast<Watched*>(tag));
  }
}

}  // namespace krul::kvclient_internal
