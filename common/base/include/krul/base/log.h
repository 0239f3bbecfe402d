// Leveled line logging to stderr, the one logging facility of both services
// (Debian 12's Abseil predates absl/log):
//
//   KRUL_LOG(WARNING) << "put " << id << " expired";
//
// writes one line
//
//   2025-01-31T12:00:00.123Z WARNING store.cc:835] put 7 expired
//
// (UTC time, severity, source file:line, message). Each line is formatted
// in full and written with one call under a lock, so lines from concurrent
// threads never interleave. Severities below the minimum (SetMinLogSeverity,
// default INFO) cost one atomic load: the message is not formatted and its
// operands are not evaluated.
//
// Services expose the minimum as a flag:
//   ABSL_FLAG(krul::LogSeverity, log_level, krul::LogSeverity::kInfo, "...");
//   krul::SetMinLogSeverity(absl::GetFlag(FLAGS_log_level));
//
// Thread-safe. Lines meant for machines (a "listening on" line a script
// waits for) are not log lines: print those on stdout.
#ifndef KRUL_BASE_LOG_H_
#define KRUL_BASE_LOG_H_

#include <cstdio>
#include <sstream>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace krul {

enum class LogSeverity : int {
  kInfo = 0,
  kWarning = 1,
  kError = 2,
};

// "INFO", "WARNING" or "ERROR".
std::string_view LogSeverityName(LogSeverity severity);

// "info", "warning" or "error", any case. INVALID_ARGUMENT otherwise.
absl::StatusOr<LogSeverity> ParseLogSeverity(std::string_view text);

// Lines below `severity` are dropped from now on.
void SetMinLogSeverity(LogSeverity severity);
LogSeverity MinLogSeverity();
inline bool ShouldLog(LogSeverity severity) { return severity >= MinLogSeverity(); }

// Sends log lines to `file` instead of stderr (nullptr: back to stderr). The
// file is not owned and must outlive the logging; for tests.
void SetLogOutput(std::FILE* file);

// For ABSL_FLAG(krul::LogSeverity, ...): the flag syntax of ParseLogSeverity.
bool AbslParseFlag(absl::string_view text, LogSeverity* severity, std::string* error);
std::string AbslUnparseFlag(LogSeverity severity);

namespace log_internal {

// One line in the making; written when destroyed.
class LogMessage {
 public:
  LogMessage(LogSeverity severity, const char* file, int line);
  ~LogMessage();
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;
  std::ostream& stream() { return stream_; }

 private:
  std::ostringstream stream_;
};

// Turns the streamed expression into void so KRUL_LOG fits in a ?: (and so
// `if (x) KRUL_LOG(INFO) << ...; else ...` parses as written).
struct Voidify {
  void operator&(std::ostream&) {}
};

inline constexpr LogSeverity kSeverity_INFO = LogSeverity::kInfo;
inline constexpr LogSeverity kSeverity_WARNING = LogSeverity::kWarning;
inline constexpr LogSeverity kSeverity_ERROR = LogSeverity::kError;

}  // namespace log_internal
}  // namespace krul

// KRUL_LOG(INFO | WARNING | ERROR) << ...;
#define KRUL_LOG(severity)                                                                         \
  !::krul::ShouldLog(::krul::log_internal::kSeverity_##severity)                                   \
      ? (void)0                                                                                    \
      : ::krul::log_internal::Voidify() &                                                          \
            ::krul::log_internal::LogMessage(::krul::log_internal::kSeverity_##severity, __FILE__, \
                                             __LINE__)                                             \
                .stream()

#endif  // KRUL_BASE_LOG_H_
