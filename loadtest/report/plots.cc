#include "report/plots.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "report/report.h"

namespace krul::loadtest {
namespace {

// A gnuplot single-quoted string ('' is a quote inside).
std::string Quoted(const std::string& s) {
  return absl::StrCat("'", absl::StrReplaceAll(s, {{"'", "''"}}), "'");
}

// Runs `gnuplot script` with stderr to `log`; its exit status, 127 when it
// could not be started.
int RunGnuplot(const std::string& script, const std::string& log) {
  const pid_t pid = fork();
  if (pid < 0) return 127;
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
      close(fd);
    }
    execlp("gnuplot", "gnuplot", script.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

}  // namespace

std::vector<std::string> PlotFileNames() {
  return {"ttft_cdf.png", "ttft_over_time.png", "ttft_vs_history.png", "throughput_over_time.png"};
}

absl::Status RenderPlots(const std::string& dir, const std::vector<PlotSeries>& series) {
  namespace fs = std::filesystem;
  const std::string data_dir = (fs::path(dir) / "plot_data").string();
  std::error_code ec;
  fs::create_directories(data_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", data_dir, ": ", ec.message()));

  struct Written {
    std::string name, points, cdf, throughput;
  };
  std::vector<Written> written;
  for (size_t i = 0; i < series.size(); ++i) {
    std::vector<const RequestRecord*> ok;
    double wall = 0;
    for (const RequestRecord& r : *series[i].records) {
      wall = std::max(wall, r.done_s());
      if (r.result.ok()) ok.push_back(&r);
    }
    if (ok.empty()) continue;
    Written w;
    w.name = series[i].name;
    w.points = absl::StrCat(data_dir, "/s", i, "_points.dat");
    w.cdf = absl::StrCat(data_dir, "/s", i, "_cdf.dat");
    w.throughput = absl::StrCat(data_dir, "/s", i, "_throughput.dat");
    std::string points = "# sent_s\tttft_ms\thistory_tokens\n";
    std::vector<double> ttft;
    for (const RequestRecord* r : ok) {
      absl::StrAppend(&points, absl::StrFormat("%.4f\t%.3f\t%d\n", r->sent_s, r->result.ttft_ms,
                                               r->history_tokens));
      ttft.push_back(r->result.ttft_ms);
    }
    std::sort(ttft.begin(), ttft.end());
    std::string cdf = "# ttft_ms\tfraction\n";
    for (size_t k = 0; k < ttft.size(); ++k) {
      absl::StrAppend(
          &cdf, absl::StrFormat("%.3f\t%.5f\n", ttft[k], static_cast<double>(k + 1) / ttft.size()));
    }
    // Completions per bin of about a fiftieth of the run (at least 0.5 s).
    const double bin = std::max(0.5, wall / 50);
    const int bins = std::max(1, static_cast<int>(std::ceil(wall / bin)));
    std::vector<double> done(bins, 0), tokens(bins, 0);
    for (const RequestRecord* r : ok) {
      const int b = std::min(bins - 1, static_cast<int>(r->done_s() / bin));
      done[b] += 1;
      tokens[b] += r->result.completion_tokens;
    }
    std::string throughput = "# bin_start_s\trequests_per_s\toutput_tokens_per_s\n";
    for (int b = 0; b <= bins; ++b) {
      // The last row repeats the last bin at its end, so "steps" draws it.
      const int k = std::min(b, bins - 1);
      absl::StrAppend(&throughput, absl::StrFormat("%.3f\t%.4f\t%.4f\n", b * bin, done[k] / bin,
                                                   tokens[k] / bin));
    }
    for (const auto& [path, text] : {std::pair{w.points, points}, std::pair{w.cdf, cdf},
                                     std::pair{w.throughput, throughput}}) {
      if (auto s = WriteTextFile(path, text); !s.ok()) return s;
    }
    written.push_back(std::move(w));
  }
  if (written.empty()) {
    return absl::FailedPreconditionError("no successful request to plot");
  }

  auto out_png = [&](const std::string& name) { return Quoted((fs::path(dir) / name).string()); };
  auto plot = [&](const std::string& columns, const std::string& style, const char* which) {
    std::string cmd = "plot ";
    for (size_t i = 0; i < written.size(); ++i) {
      const Written& w = written[i];
      const std::string& file = std::string(which) == "cdf"          ? w.cdf
                                : std::string(which) == "throughput" ? w.throughput
                                                                     : w.points;
      absl::StrAppend(&cmd, i ? ", " : "", Quoted(file), " using ", columns, " ", style, " title ",
                      Quoted(w.name));
    }
    return cmd + "\n";
  };
  std::string gp =
      "set terminal pngcairo size 960,600 noenhanced font ',10'\n"
      "set datafile separator '\\t'\n"
      "set grid\n"
      "set key top left\n";
  absl::StrAppend(&gp, "set output ", out_png("ttft_cdf.png"), "\n",
                  "set title 'TTFT CDF (client side, first streamed token)'\n",
                  "set xlabel 'TTFT (ms, log scale)'\nset ylabel 'fraction of requests'\n",
                  "set logscale x\nset yrange [0:1]\nset key bottom right\n",
                  plot("1:2", "with steps lw 2", "cdf"), "unset logscale x\nset autoscale y\n",
                  "set key top left\n");
  absl::StrAppend(&gp, "set output ", out_png("ttft_over_time.png"), "\n",
                  "set title 'TTFT over the run'\n",
                  "set xlabel 'send time (s since start)'\nset ylabel 'TTFT (ms)'\n",
                  plot("1:2", "with points pt 7 ps 0.6", "points"));
  absl::StrAppend(&gp, "set output ", out_png("ttft_vs_history.png"), "\n",
                  "set title 'TTFT vs history length'\n",
                  "set xlabel 'history tokens (prompt + answer of the earlier turns)'\n",
                  "set ylabel 'TTFT (ms)'\n", plot("3:2", "with points pt 7 ps 0.6", "points"));
  absl::StrAppend(&gp, "set output ", out_png("throughput_over_time.png"), "\n",
                  "set title 'Throughput over the run'\n",
                  "set xlabel 'time (s since start)'\nset ylabel 'completed requests/s'\n",
                  "set yrange [0:*]\nset multiplot layout 2,1\n",
                  plot("1:2", "with steps lw 2", "throughput"),
                  "set ylabel 'output tokens/s'\nunset title\n",
                  plot("1:3", "with steps lw 2", "throughput"), "unset multiplot\n");
  const std::string script = data_dir + "/plots.gp";
  if (auto s = WriteTextFile(script, gp); !s.ok()) return s;
  const std::string log = data_dir + "/gnuplot.log";
  const int rc = RunGnuplot(script, log);
  if (rc == 127) {
    return absl::NotFoundError(
        "gnuplot is not installed (Debian: gnuplot-nox, see scripts/install-deps.sh)");
  }
  if (rc != 0) {
    return absl::InternalError(absl::StrCat("gnuplot failed (exit ", rc, "); see ", log));
  }
  for (const std::string& name : PlotFileNames()) {
    if (!fs::exists(fs::path(dir) / name)) {
      return absl::InternalError(absl::StrCat("gnuplot wrote no ", name, "; see ", log));
    }
  }
  return absl::OkStatus();
}

}  // namespace krul::loadtest
