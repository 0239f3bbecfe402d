// One chat message as the wire format carries it: a role and its text.
// Part of the wire format (krul_worker_api), so clients and the load tester
// use the same type as the worker without linking an engine. How messages
// become prompt tokens is the worker's business (worker/core/chat_template.h).
//
// Thread-safe (plain values and pure functions).
#ifndef KRUL_SERVICES_WORKER_API_CHAT_MESSAGE_H_
#define KRUL_SERVICES_WORKER_API_CHAT_MESSAGE_H_

#include <cstdint>
#include <string>
#include <string_view>

namespace krul::worker {

// The wire's "developer" role arrives as kSystem. The values are stored in
// digests and session records: never renumber them.
enum class Role : uint8_t { kSystem = 0, kUser = 1, kAssistant = 2 };

// "system", "user", "assistant".
std::string_view RoleName(Role role);

struct ChatMessage {
  Role role = Role::kUser;
  std::string content;

  friend bool operator==(const ChatMessage&, const ChatMessage&) = default;
};

}  // namespace krul::worker

#endif  // KRUL_SERVICES_WORKER_API_CHAT_MESSAGE_H_
