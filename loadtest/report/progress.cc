#include "report/progress.h"

#include <unistd.h>

#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace krul::loadtest {

absl::StatusOr<ProgressStyle> ParseProgressStyle(std::string_view name) {
  if (name == "auto") return ProgressStyle::kAuto;
  if (name == "bar") return ProgressStyle::kBar;
  if (name == "lines") return ProgressStyle::kLines;
  if (name == "none") return ProgressStyle::kNone;
  return absl::InvalidArgumentError(absl::StrCat("unknown progress style '", std::string(name),
                                                 "'; expected auto, bar, lines or none"));
}

std::string ProgressLine(const Snapshot& s, int width) {
  const int done = s.ok + s.failed;
  const double fraction = s.planned > 0 ? static_cast<double>(done) / s.planned : 0.0;
  const int filled = std::min(width, static_cast<int>(fraction * width + 0.5));
  std::string bar = std::string(filled, '#') + std::string(width - filled, '.');
  return absl::StrFormat(
      "[%s] %d/%d done (%d ok, %d failed), %d in flight, %.1f req/s, TTFT p50 %.1f ms, %.0f s", bar,
      done, s.planned, s.ok, s.failed, s.in_flight, s.elapsed_s > 0 ? done / s.elapsed_s : 0.0,
      s.recent_ttft_p50_ms, s.elapsed_s);
}

Progress::Progress(const Driver& driver, std::string label, ProgressStyle style, FILE* out)
    : driver_(driver), label_(std::move(label)), style_(style), out_(out) {
  if (style_ == ProgressStyle::kAuto) {
    style_ = isatty(fileno(out_)) ? ProgressStyle::kBar : ProgressStyle::kLines;
  }
}

Progress::~Progress() { Stop(); }

void Progress::Start() {
  if (style_ == ProgressStyle::kNone || running_.exchange(true)) return;
  thread_ = std::thread([this] { Loop(); });
}

void Progress::Stop() {
  if (!running_.exchange(false)) return;
  thread_.join();
  Print(true);
}

void Progress::Print(bool final) {
  const std::string line = absl::StrCat(label_, ProgressLine(driver_.Snap(), 30));
  if (style_ == ProgressStyle::kBar) {
    // \r and clear-to-end-of-line redraw the bar in place.
    std::fprintf(out_, "\r%s\x1b[K%s", line.c_str(), final ? "\n" : "");
  } else {
    std::fprintf(out_, "%s\n", line.c_str());
  }
  std::fflush(out_);
}

void Progress::Loop() {
  const auto period = style_ == ProgressStyle::kBar ? std::chrono::milliseconds(250)
                                                    : std::chrono::milliseconds(5000);
  auto next = std::chrono::steady_clock::now() + period;
  while (running_.load()) {
    // Short steps so that Stop() returns promptly.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (std::chrono::steady_clock::now() < next) continue;
    next += period;
    Print(false);
  }
}

}  // namespace krul::loadtest
