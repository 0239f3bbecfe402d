// PNG plots of a run (or of one run per mode), rendered by gnuplot (Debian
// gnuplot-nox) from data files written beside them:
//   ttft_cdf.png             TTFT CDF, one line per mode
//   ttft_over_time.png       TTFT of each request against its send time
//   ttft_vs_history.png      TTFT against the tokens of history the turn
//                            carries (prompt + answer of the turns before)
//   throughput_over_time.png completed requests/s and output tokens/s
// Only successful requests are plotted.
//
// Thread-safe (no shared state; gnuplot runs as a child process).
#ifndef KRUL_LOADTEST_REPORT_PLOTS_H_
#define KRUL_LOADTEST_REPORT_PLOTS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "client/driver.h"

namespace krul::loadtest {

struct PlotSeries {
  std::string name;                           // the mode
  const std::vector<RequestRecord>* records;  // borrowed
};

// The PNG file names RenderPlots writes.
std::vector<std::string> PlotFileNames();

// Writes DIR/plot_data/*.dat and DIR/plot_data/plots.gp, then runs gnuplot
// to write the PNGs into DIR. FAILED_PRECONDITION when no series has a
// successful request; NOT_FOUND when gnuplot cannot be run; INTERNAL when
// a file cannot be written or gnuplot fails (its stderr is in
// DIR/plot_data/gnuplot.log).
absl::Status RenderPlots(const std::string& dir, const std::vector<PlotSeries>& series);

}  // namespace krul::loadtest

#endif  // KRUL_LOADTEST_REPORT_PLOTS_H_
