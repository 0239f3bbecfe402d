// Shows a run's progress while it lasts: on a terminal a one-line bar
// redrawn a few times a second, otherwise a plain line every few seconds
// (for logs and CI).
//
// Thread-safe: Start() and Stop() from one thread; it reads the driver's
// Snap() from its own thread.
#ifndef KRUL_LOADTEST_REPORT_PROGRESS_H_
#define KRUL_LOADTEST_REPORT_PROGRESS_H_

#include <atomic>
#include <cstdio>
#include <string>
#include <thread>

#include "client/driver.h"

namespace krul::loadtest {

enum class ProgressStyle { kAuto, kBar, kLines, kNone };
// "auto", "bar", "lines", "none"; INVALID_ARGUMENT otherwise.
absl::StatusOr<ProgressStyle> ParseProgressStyle(std::string_view name);

// One line of progress (no newline): "[#####.....] 123/400 sent ...".
std::string ProgressLine(const Snapshot& s, int width);

class Progress {
 public:
  // `driver` is borrowed; `label` starts each line (e.g. the mode).
  // kAuto: kBar when `out` is a terminal, else kLines.
  Progress(const Driver& driver, std::string label, ProgressStyle style, FILE* out = stderr);
  ~Progress();  // Stop()s

  void Start();
  void Stop();  // prints the final state once

 private:
  void Loop();
  void Print(bool final);

  const Driver& driver_;
  const std::string label_;
  ProgressStyle style_;
  FILE* out_;
  std::atomic<bool> running_{false};
  std::thread thread_;
};

}  // namespace krul::loadtest

#endif  // KRUL_LOADTEST_REPORT_PROGRESS_H_
