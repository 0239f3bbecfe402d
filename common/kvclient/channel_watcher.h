// ChannelWatcher: keeps gRPC channels polled and connecting in the
// background. Internal to krul_kvclient.
//
// Why: gRPC's synchronous client notices that a connection attempt finished
// only while some thread polls the channel, i.e. while a call waits on it.
// Calls on a channel in TRANSIENT_FAILURE fail at once (they are not
// wait-for-ready), so after a shard restarts nobody polls, and only gRPC's
// backup poller (every 5 s, GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS)
// completes the reconnection: a restarted kvstore was used again 1.3 to 5 s
// after it was back, whatever the reconnect backoff. One thread waits for
// state changes of every watched channel on a CompletionQueue (which polls
// them) and asks idle channels to connect, so a shard that is back is
// reconnected within the reconnect backoff, before the next call needs it.
//
// Thread-safe.
#ifndef KRUL_COMMON_KVCLIENT_CHANNEL_WATCHER_H_
#define KRUL_COMMON_KVCLIENT_CHANNEL_WATCHER_H_

#include <grpcpp/channel.h>
#include <grpcpp/completion_queue.h>

#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace krul::kvclient_internal {

class ChannelWatcher {
 public:
  ChannelWatcher() = default;
  // Stops watching; waits at most one watch period (200 ms).
  ~ChannelWatcher();
  ChannelWatcher(const ChannelWatcher&) = delete;
  ChannelWatcher& operator=(const ChannelWatcher&) = delete;

  // Watches `channel` until this object is destroyed (it keeps a reference).
  // The first call starts the thread.
  void Watch(std::shared_ptr<grpc::Channel> channel);

 private:
  struct Watched {
    std::shared_ptr<grpc::Channel> channel;
  };
  void Arm(Watched* w);
  void Loop();

  grpc::CompletionQueue cq_;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<Watched>> watched_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // Started by the first Watch.
};

}  // namespace krul::kvclient_internal

#endif  // KRUL_COMMON_KVCLIENT_CHANNEL_WATCHER_H_
