#include "storage/loopback_tcp.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

namespace krul::bench {

absl::StatusOr<LoopbackTcpPair> ConnectLoopbackTcp() {
  int listener = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      listen(listener, 1) != 0 ||
      getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    if (listener >= 0) close(listener);
    return absl::InternalError("bind/listen failed");
  }
  LoopbackTcpPair pair;
  pair.sender = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(pair.sender, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    if (pair.sender >= 0) close(pair.sender);
    close(listener);
    return absl::UnavailableError("connect failed");
  }
  pair.receiver = accept(listener, nullptr, nullptr);
  close(listener);
  return pair;
}

}  // namespace krul::bench
