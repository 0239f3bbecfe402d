#include "krul/base/log.h"

#include <atomic>
#include <cstring>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace krul {
namespace {

std::atomic<int> min_severity{static_cast<int>(LogSeverity::kInfo)};

absl::Mutex output_mu(absl::kConstInit);
std::FILE* output ABSL_GUARDED_BY(output_mu) = nullptr;  // nullptr: stderr

// "services/kvstore/storage/store.cc" -> "store.cc": the name is enough to
// find the line, and keeps lines short.
const char* BaseName(const char* path) {
  const char* slash = std::strrchr(path, '/');
  return slash != nullptr ? slash + 1 : path;
}

}  // namespace

std::string_view LogSeverityName(LogSeverity severity) {
  switch (severity) {
    case LogSeverity::kInfo:
      return "INFO";
    case LogSeverity::kWarning:
      return "WARNING";
    case LogSeverity::kError:
      return "ERROR";
  }
  return "UNKNOWN";
}

absl::StatusOr<LogSeverity> ParseLogSeverity(std::string_view text) {
  const std::string upper = absl::AsciiStrToUpper(std::string(text));
  for (LogSeverity s : {LogSeverity::kInfo, LogSeverity::kWarning, LogSeverity::kError}) {
    if (upper == LogSeverityName(s)) return s;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown log level '", std::string(text), "'; expected info, warning or error"));
}

void SetMinLogSeverity(LogSeverity severity) {
  min_severity.store(static_cast<int>(severity), std::memory_order_relaxed);
}

LogSeverity MinLogSeverity() {
  return static_cast<LogSeverity>(min_severity.load(std::memory_order_relaxed));
}

void SetLogOutput(std::FILE* file) {
  absl::MutexLock lock(&output_mu);
  output = file;
}

bool AbslParseFlag(absl::string_view text, LogSeverity* severity, std::string* error) {
  absl::StatusOr<LogSeverity> parsed = ParseLogSeverity(std::string_view(text.data(), text.size()));
  if (!parsed.ok()) {
    *error = std::string(parsed.status().message());
    return false;
  }
  *severity = *parsed;
  return true;
}

std::string AbslUnparseFlag(LogSeverity severity) {
  return absl::AsciiStrToLower(std::string(LogSeverityName(severity)));
}

namespace log_internal {

LogMessage::LogMessage(LogSeverity severity, const char* file, int line) {
  stream_ << absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()) << ' '
          << LogSeverityName(severity) << ' ' << BaseName(file) << ':' << line << "] ";
}

LogMessage::~LogMessage() {
  stream_ << '\n';
  const std::string text = stream_.str();
  absl::MutexLock lock(&output_mu);
  std::FILE* f = output != nullptr ? output : stderr;
  std::fwrite(text.data(), 1, text.size(), f);
  std::fflush(f);
}

}  // namespace log_internal
}  // namespace krul
