// Reads the Prometheus /metrics of the workers and the kvstore before and
// after a run and sums up what changed: the kvstore's hit rate, bytes and
// objects per tier, evictions; the workers' restores by result, fallbacks
// by reason, stored and loaded bytes (metric names: DESIGN.md "Metrics").
//
// Thread-safe (no shared state).
#ifndef KRUL_LOADTEST_REPORT_METRICS_SCRAPE_H_
#define KRUL_LOADTEST_REPORT_METRICS_SCRAPE_H_

#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "client/endpoint.h"

namespace krul::loadtest {

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// The samples of a text exposition (comments and blank lines skipped).
// INVALID_ARGUMENT naming the first line that is not `name{labels} value`.
absl::StatusOr<std::vector<Sample>> ParseExposition(std::string_view text);

// Sum of every sample called `name` whose labels include label=value
// (every sample of `name` when `label` is empty).
double SumSamples(const std::vector<Sample>& samples, std::string_view name,
                  std::string_view label = "", std::string_view value = "");
// Sum of `name` per value of `label`.
std::map<std::string, double> SumByLabel(const std::vector<Sample>& samples, std::string_view name,
                                         std::string_view label);

// GET http://endpoint/metrics. UNAVAILABLE when it cannot be fetched,
// INVALID_ARGUMENT when it does not parse.
absl::StatusOr<std::vector<Sample>> Scrape(const Endpoint& endpoint);

struct ScrapeTarget {
  std::string role;  // "worker" or "kvstore"
  Endpoint endpoint;
};

struct ScrapeRound {
  // Per target, in order; nullopt when the scrape failed (errors[i] says why).
  std::vector<std::optional<std::vector<Sample>>> samples;
  std::vector<std::string> errors;
};

ScrapeRound ScrapeAll(const std::vector<ScrapeTarget>& targets);

// {"targets": [{role, address, error?}],
//  "kvstore": {hits_by_tier, misses, hit_rate, bytes_by_tier, objects_by_tier,
//              evictions_by_tier, transfer_bytes},
//  "workers": {restores_by_result, hit_rate, fallbacks_by_reason,
//              stored_bytes, loaded_bytes, recomputed_tokens, restored_tokens,
//              persists_by_result, requests_by_code}}
// Counters are after - before; gauges (bytes, objects) are the after values.
// Sections whose targets were not all scraped both times say so
// ("complete": false).
nlohmann::json SummarizeScrapes(const std::vector<ScrapeTarget>& targets, const ScrapeRound& before,
                                const ScrapeRound& after);

}  // namespace krul::loadtest

#endif  // KRUL_LOADTEST_REPORT_METRICS_SCRAPE_H_
