#include "report/metrics_scrape.h"

#include <httplib.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "worker/api/string_view_conversion.h"

namespace krul::loadtest {
namespace {

using nlohmann::json;
absl::string_view AV(std::string_view s) { return worker::ToAbslStringView(s); }
std::string_view SV(absl::string_view s) { return worker::ToStdStringView(s); }

// Parses `{k="v",...}` starting at text[*pos] == '{'; leaves *pos after '}'.
bool ParseLabels(std::string_view text, size_t* pos, std::map<std::string, std::string>* out) {
  size_t i = *pos + 1;
  while (i < text.size()) {
    while (i < text.size() && (text[i] == ' ' || text[i] == ',')) ++i;
    if (i < text.size() && text[i] == '}') {
      *pos = i + 1;
      return true;
    }
    const size_t eq = text.find('=', i);
    if (eq == std::string_view::npos || eq + 1 >= text.size() || text[eq + 1] != '"') return false;
    std::string key(absl::StripAsciiWhitespace(AV(text.substr(i, eq - i))));
    std::string value;
    size_t j = eq + 2;
    for (; j < text.size() && text[j] != '"'; ++j) {
      if (text[j] == '\\' && j + 1 < text.size()) {
        ++j;
        value += text[j] == 'n' ? '\n' : text[j];
      } else {
        value += text[j];
      }
    }
    if (j >= text.size()) return false;
    (*out)[key] = value;
    i = j + 1;
  }
  return false;
}

json ToJson(const std::map<std::string, double>& m) {
  json j = json::object();
  for (const auto& [k, v] : m) j[k] = v;
  return j;
}

std::map<std::string, double> Minus(std::map<std::string, double> a,
                                    const std::map<std::string, double>& b) {
  for (const auto& [k, v] : b) a[k] -= v;
  return a;
}

void AddInto(std::map<std::string, double>& into, const std::map<std::string, double>& m) {
  for (const auto& [k, v] : m) into[k] += v;
}

double Ratio(double num, double den) { return den > 0 ? num / den : 0.0; }

}  // namespace

absl::StatusOr<std::vector<Sample>> ParseExposition(std::string_view text) {
  std::vector<Sample> out;
  size_t pos = 0;
  int line_number = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = SV(absl::StripAsciiWhitespace(AV(text.substr(pos, end - pos))));
    pos = end + 1;
    ++line_number;
    if (line.empty() || line.front() == '#') continue;
    Sample s;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    s.name = std::string(line.substr(0, i));
    if (i < line.size() && line[i] == '{' && !ParseLabels(line, &i, &s.labels)) {
      return absl::InvalidArgumentError(
          absl::StrCat("metrics line ", line_number, ": bad labels: ", std::string(line)));
    }
    std::string_view rest = SV(absl::StripAsciiWhitespace(AV(line.substr(i))));
    // A timestamp may follow the value.
    if (size_t space = rest.find(' '); space != std::string_view::npos)
      rest = rest.substr(0, space);
    if (s.name.empty() || !absl::SimpleAtod(AV(rest), &s.value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("metrics line ", line_number, ": not 'name value': ", std::string(line)));
    }
    out.push_back(std::move(s));
  }
  return out;
}

double SumSamples(const std::vector<Sample>& samples, std::string_view name, std::string_view label,
                  std::string_view value) {
  double total = 0;
  for (const Sample& s : samples) {
    if (s.name != name) continue;
    if (!label.empty()) {
      auto it = s.labels.find(std::string(label));
      if (it == s.labels.end() || it->second != value) continue;
    }
    total += s.value;
  }
  return total;
}

std::map<std::string, double> SumByLabel(const std::vector<Sample>& samples, std::string_view name,
                                         std::string_view label) {
  std::map<std::string, double> out;
  for (const Sample& s : samples) {
    if (s.name != name) continue;
    auto it = s.labels.find(std::string(label));
    out[it == s.labels.end() ? std::string() : it->second] += s.value;
  }
  return out;
}

absl::StatusOr<std::vector<Sample>> Scrape(const Endpoint& endpoint) {
  httplib::Client client(endpoint.host, endpoint.port);
  client.set_connection_timeout(5, 0);
  client.set_read_timeout(10, 0);
  auto res = client.Get("/metrics");
  if (!res) {
    return absl::UnavailableError(
        absl::StrCat("GET ", endpoint.Name(), "/metrics: ", httplib::to_string(res.error())));
  }
  if (res->status != 200) {
    return absl::UnavailableError(
        absl::StrCat("GET ", endpoint.Name(), "/metrics: HTTP ", res->status));
  }
  return ParseExposition(res->body);
}

ScrapeRound ScrapeAll(const std::vector<ScrapeTarget>& targets) {
  ScrapeRound round;
  for (const ScrapeTarget& t : targets) {
    auto samples = Scrape(t.endpoint);
    if (samples.ok()) {
      round.samples.push_back(*std::move(samples));
      round.errors.emplace_back();
    } else {
      round.samples.push_back(std::nullopt);
      round.errors.push_back(std::string(samples.status().message()));
    }
  }
  return round;
}

json SummarizeScrapes(const std::vector<ScrapeTarget>& targets, const ScrapeRound& before,
                      const ScrapeRound& after) {
  json out;
  out["targets"] = json::array();
  bool kv_complete = true, workers_complete = true;
  int kv_targets = 0, worker_targets = 0;
  std::map<std::string, double> kv_hits, kv_bytes, kv_objects, kv_evictions;
  double kv_misses = 0, kv_transfer = 0;
  std::map<std::string, double> restores, fallbacks, persists, requests;
  double stored = 0, loaded = 0, recomputed = 0, restored = 0;
  for (size_t i = 0; i < targets.size(); ++i) {
    const ScrapeTarget& t = targets[i];
    json entry = {{"role", t.role}, {"address", t.endpoint.Name()}};
    const bool both = before.samples[i].has_value() && after.samples[i].has_value();
    if (!both) {
      entry["error"] = !before.errors[i].empty() ? before.errors[i] : after.errors[i];
    }
    out["targets"].push_back(entry);
    const bool kv = t.role == "kvstore";
    (kv ? kv_targets : worker_targets) += 1;
    if (!both) {
      (kv ? kv_complete : workers_complete) = false;
      continue;
    }
    const std::vector<Sample>& b = *before.samples[i];
    const std::vector<Sample>& a = *after.samples[i];
    auto delta = [&](const char* name) { return SumSamples(a, name) - SumSamples(b, name); };
    auto delta_by = [&](const char* name, const char* label) {
      return Minus(SumByLabel(a, name, label), SumByLabel(b, name, label));
    };
    if (kv) {
      AddInto(kv_hits, delta_by("krul_kvstore_hits_total", "tier"));
      kv_misses += delta("krul_kvstore_misses_total");
      AddInto(kv_bytes, SumByLabel(a, "krul_kvstore_bytes", "tier"));
      AddInto(kv_objects, SumByLabel(a, "krul_kvstore_objects", "tier"));
      AddInto(kv_evictions, delta_by("krul_kvstore_evictions_total", "tier"));
      kv_transfer += delta("krul_kvstore_transfer_bytes_total");
    } else {
      AddInto(restores, delta_by("krul_worker_restores_total", "result"));
      AddInto(fallbacks, delta_by("krul_worker_fallbacks_total", "reason"));
      AddInto(persists, delta_by("krul_worker_persists_total", "result"));
      AddInto(requests, delta_by("krul_worker_requests_total", "code"));
      stored += delta("krul_worker_stored_bytes_total");
      loaded += delta("krul_worker_loaded_bytes_total");
      recomputed += delta("krul_worker_recomputed_tokens_total");
      restored += delta("krul_worker_restored_tokens_total");
    }
  }
  if (kv_targets > 0) {
    double hits = 0;
    for (const auto& [tier, n] : kv_hits) hits += n;
    out["kvstore"] = {{"complete", kv_complete},
                      {"hits_by_tier", ToJson(kv_hits)},
                      {"misses", kv_misses},
                      {"hit_rate", Ratio(hits, hits + kv_misses)},
                      {"bytes_by_tier", ToJson(kv_bytes)},
                      {"objects_by_tier", ToJson(kv_objects)},
                      {"evictions_by_tier", ToJson(kv_evictions)},
                      {"transfer_bytes", kv_transfer}};
  }
  if (worker_targets > 0) {
    double lookups = 0;
    for (const auto& [result, n] : restores) lookups += n;
    out["workers"] = {{"complete", workers_complete},
                      {"restores_by_result", ToJson(restores)},
                      {"hit_rate", Ratio(restores.count("hit") ? restores.at("hit") : 0, lookups)},
                      {"fallbacks_by_reason", ToJson(fallbacks)},
                      {"persists_by_result", ToJson(persists)},
                      {"requests_by_code", ToJson(requests)},
                      {"stored_bytes", stored},
                      {"loaded_bytes", loaded},
                      {"recomputed_tokens", recomputed},
                      {"restored_tokens", restored}};
  }
  return out;
}

}  // namespace krul::loadtest
