// What a run measured, as load testers read it: summary.json (per mode and
// per endpoint: counts, errors by kind, p50/p90/p99 of TTFT, TPOT and
// end-to-end latency, throughput, goodput under a TTFT SLO, the restore
// mix the workers reported), requests.csv (one row per request), a printed
// table, and the comparison of runs of one trace under several restore modes.
//
// Thread-safe (pure functions).
#ifndef KRUL_LOADTEST_REPORT_REPORT_H_
#define KRUL_LOADTEST_REPORT_REPORT_H_

#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "client/driver.h"

namespace krul::loadtest {

// The q-quantile (q in [0, 1]) with linear interpolation between closest
// ranks: sorted v at h = q * (n - 1), v[floor h] + frac(h) * (v[floor h + 1]
// - v[floor h]) (numpy's default). 0 for no values.
double Quantile(std::vector<double> values, double q);

struct ReportOptions {
  double slo_ttft_ms = 1000;  // goodput counts answers whose TTFT is at most this
};

// The mode a request ran in: the worker's report, else the requested mode,
// else "default".
std::string ModeOf(const RequestRecord& r);

// summary.json of one run:
//  {"requests": {planned, sent, ok, failed, not_sent: {...}, accounted},
//   "wall_s", "stopped", "slo_ttft_ms",
//   "all": GROUP, "by_mode": {mode: GROUP}, "by_endpoint": {addr: GROUP}}
// GROUP = {count, ok, errors: {kind: n}, ttft_ms, ttft_restored_ms (turns
// after the first), tpot_ms, e2e_ms, lateness_ms: each {n, mean, p50, p90,
// p99}; throughput_rps, output_tokens_per_s, input_tokens_per_s,
// goodput_rps, goodput_fraction; restore: {hit, miss, fallback, none, ...},
// history_hit_rate (turns after the first whose history was restored),
// fallbacks_by_reason, restored_tokens, loaded_tokens, recomputed_tokens}.
// Rates divide by the run's wall time.
nlohmann::json SummarizeRun(const RunResult& run, const ReportOptions& options);

// requests.csv: a header and one row per record (RFC 4180 quoting).
std::string RequestsCsv(const std::vector<RequestRecord>& records);

// The summary as a table: one row for all requests, then per mode and per
// endpoint.
std::string FormatSummaryTable(const nlohmann::json& summary);

// Runs of the same trace, one per mode (name, summary): each mode's TTFT
// (all answers, and turns after the first, which restore a history) with
// its ratios against the "recompute" and "load" runs (baseline p / mode p:
// above 1 is faster), latency, throughput and goodput. Ratios against a
// mode that did not run are null.
nlohmann::json CompareModes(const std::vector<std::pair<std::string, nlohmann::json>>& runs);
std::string FormatCompareTable(const nlohmann::json& compare);

// Writes `content` to `path` (replacing it). INTERNAL when that fails.
absl::Status WriteTextFile(const std::string& path, const std::string& content);

}  // namespace krul::loadtest

#endif  // KRUL_LOADTEST_REPORT_REPORT_H_
