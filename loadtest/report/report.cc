#include "report/report.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace krul::loadtest {
namespace {

using nlohmann::json;

json Distribution(std::vector<double> v) {
  double sum = 0;
  for (double x : v) sum += x;
  return {{"n", v.size()},
          {"mean", v.empty() ? 0.0 : sum / v.size()},
          {"p50", Quantile(v, 0.50)},
          {"p90", Quantile(v, 0.90)},
          {"p99", Quantile(v, 0.99)}};
}

json Group(const std::vector<const RequestRecord*>& records, double wall_s, double slo_ms) {
  std::vector<double> ttft, ttft_restored, tpot, e2e, lateness;
  std::map<std::string, int> errors, restore, fallbacks;
  int ok = 0, good = 0, later_turns = 0, later_hits = 0;
  double out_tokens = 0, in_tokens = 0, restored = 0, loaded = 0, recomputed = 0;
  for (const RequestRecord* r : records) {
    lateness.push_back(r->lateness_ms);
    if (!r->result.ok()) {
      ++errors[r->result.error_kind];
      continue;
    }
    ++ok;
    ttft.push_back(r->result.ttft_ms);
    if (r->turn > 1) {
      ttft_restored.push_back(r->result.ttft_ms);
      ++later_turns;
      later_hits += r->restore == "hit";
    }
    if (r->result.tpot_ms >= 0) tpot.push_back(r->result.tpot_ms);
    e2e.push_back(r->result.e2e_ms);
    good += r->result.ttft_ms <= slo_ms;
    out_tokens += r->result.completion_tokens;
    in_tokens += r->result.prompt_tokens;
    ++restore[r->restore.empty() ? "unreported" : r->restore];
    if (!r->fallback_reason.empty()) ++fallbacks[r->fallback_reason];
    restored += r->restored_tokens;
    loaded += r->loaded_tokens;
    recomputed += r->recomputed_tokens;
  }
  auto rate = [&](double x) { return wall_s > 0 ? x / wall_s : 0.0; };
  json j = {
      {"count", records.size()},
      {"ok", ok},
      {"errors", errors},
      {"ttft_ms", Distribution(ttft)},
      {"ttft_restored_ms", Distribution(ttft_restored)},
      {"tpot_ms", Distribution(tpot)},
      {"e2e_ms", Distribution(e2e)},
      {"lateness_ms", Distribution(lateness)},
      {"throughput_rps", rate(ok)},
      {"output_tokens_per_s", rate(out_tokens)},
      {"input_tokens_per_s", rate(in_tokens)},
      {"goodput_rps", rate(good)},
      {"goodput_fraction", ok > 0 ? static_cast<double>(good) / records.size() : 0.0},
      {"restore", restore},
      {"history_hit_rate", later_turns > 0 ? static_cast<double>(later_hits) / later_turns : 0.0},
      {"fallbacks_by_reason", fallbacks},
      {"restored_tokens", restored},
      {"loaded_tokens", loaded},
      {"recomputed_tokens", recomputed}};
  return j;
}

std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

std::string Num(double v) { return absl::StrFormat("%.3f", v); }

double At(const json& j, const char* a, const char* b) {
  if (!j.contains(a) || !j[a].contains(b) || !j[a][b].is_number()) return 0;
  return j[a][b].get<double>();
}

std::string TableRow(const std::string& name, const json& g) {
  int errors = 0;
  for (const auto& [kind, n] : g["errors"].items()) errors += n.get<int>();
  const bool later_turns = g["ttft_restored_ms"]["n"].get<int>() > 0;
  return absl::StrFormat(
      "%-24s %6d %6d %9.1f %9.1f %9.1f %8.2f %9.1f %8.2f %8.1f %6.1f%% %6s\n", name,
      g["count"].get<int>(), errors, At(g, "ttft_ms", "p50"), At(g, "ttft_ms", "p90"),
      At(g, "ttft_ms", "p99"), At(g, "tpot_ms", "p50"), At(g, "e2e_ms", "p50"),
      g["throughput_rps"].get<double>(), g["output_tokens_per_s"].get<double>(),
      100.0 * g["goodput_fraction"].get<double>(),
      later_turns ? absl::StrFormat("%.0f%%", 100.0 * g["history_hit_rate"].get<double>())
                  : std::string("-"));
}

// baseline / value, or null when either is missing.
json RatioOrNull(double baseline, double value) {
  if (baseline <= 0 || value <= 0) return nullptr;
  return baseline / value;
}

std::string RatioText(const json& r) {
  return r.is_number() ? absl::StrFormat("%.2fx", r.get<double>()) : std::string("-");
}

}  // namespace

double Quantile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  q = std::clamp(q, 0.0, 1.0);
  const double h = q * static_cast<double>(values.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(h));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  return values[lo] + (h - static_cast<double>(lo)) * (values[hi] - values[lo]);
}

std::string ModeOf(const RequestRecord& r) {
  if (!r.mode.empty()) return r.mode;
  if (!r.requested_mode.empty()) return r.requested_mode;
  return "default";
}

json SummarizeRun(const RunResult& run, const ReportOptions& options) {
  std::vector<const RequestRecord*> all;
  std::map<std::string, std::vector<const RequestRecord*>> by_mode, by_endpoint;
  int ok = 0;
  for (const RequestRecord& r : run.records) {
    all.push_back(&r);
    by_mode[ModeOf(r)].push_back(&r);
    by_endpoint[r.endpoint].push_back(&r);
    ok += r.result.ok();
  }
  const int sent = static_cast<int>(run.records.size());
  json not_sent = {{"max_requests", run.not_sent.max_requests},
                   {"duration", run.not_sent.duration},
                   {"stopped", run.not_sent.stopped},
                   {"after_error", run.not_sent.after_error},
                   {"context_full", run.not_sent.context_full},
                   {"unauthorized", run.not_sent.unauthorized},
                   {"total", run.not_sent.total()}};
  json j;
  j["requests"] = {{"planned", run.planned},
                   {"sent", sent},
                   {"ok", ok},
                   {"failed", sent - ok},
                   {"not_sent", not_sent},
                   {"accounted", run.planned == sent + run.not_sent.total()}};
  j["wall_s"] = run.wall_s;
  j["stopped"] = run.stopped;
  j["stopped_unauthorized"] = run.unauthorized;
  j["slo_ttft_ms"] = options.slo_ttft_ms;
  j["all"] = Group(all, run.wall_s, options.slo_ttft_ms);
  j["by_mode"] = json::object();
  for (const auto& [mode, records] : by_mode) {
    j["by_mode"][mode] = Group(records, run.wall_s, options.slo_ttft_ms);
  }
  j["by_endpoint"] = json::object();
  for (const auto& [endpoint, records] : by_endpoint) {
    j["by_endpoint"][endpoint] = Group(records, run.wall_s, options.slo_ttft_ms);
  }
  return j;
}

std::string RequestsCsv(const std::vector<RequestRecord>& records) {
  std::string out =
      "index,conversation,turn,domain,trace_line,trace_record,endpoint,requested_mode,mode,"
      "restore,fallback_reason,worker_id,scheduled_s,sent_s,lateness_ms,http_status,error_kind,"
      "error,ttft_ms,tpot_ms,e2e_ms,prompt_tokens,completion_tokens,history_tokens,max_tokens,"
      "restored_tokens,loaded_tokens,recomputed_tokens,loaded_bytes,server_ttft_ms,restore_ms,"
      "queue_ms,finish_reason\n";
  for (const RequestRecord& r : records) {
    const ChatResult& x = r.result;
    absl::StrAppend(&out, r.index, ",", CsvField(r.conversation), ",", r.turn, ",",
                    CsvField(r.domain), ",", r.trace_line, ",", r.trace_record, ",",
                    CsvField(r.endpoint), ",", CsvField(r.requested_mode), ",", CsvField(r.mode),
                    ",", CsvField(r.restore), ",", CsvField(r.fallback_reason), ",",
                    CsvField(r.worker_id), ",", Num(r.scheduled_s), ",", Num(r.sent_s), ",",
                    Num(r.lateness_ms), ",", x.http_status, ",", CsvField(x.error_kind), ",",
                    CsvField(x.error), ",", Num(x.ttft_ms), ",", Num(x.tpot_ms), ",", Num(x.e2e_ms),
                    ",", x.prompt_tokens, ",", x.completion_tokens, ",");
    absl::StrAppend(&out, r.history_tokens, ",", r.max_tokens, ",", r.restored_tokens, ",",
                    Num(r.loaded_tokens), ",", Num(r.recomputed_tokens), ",",
                    absl::StrFormat("%.0f", r.loaded_bytes), ",", Num(r.server_ttft_ms), ",",
                    Num(r.restore_ms), ",", Num(r.queue_ms), ",", CsvField(x.finish_reason), "\n");
  }
  return out;
}

std::string FormatSummaryTable(const json& summary) {
  const json& req = summary["requests"];
  std::string out = absl::StrFormat(
      "requests: %d planned, %d sent, %d ok, %d failed, %d not sent (%s); wall %.1f s%s\n",
      req["planned"].get<int>(), req["sent"].get<int>(), req["ok"].get<int>(),
      req["failed"].get<int>(), req["not_sent"]["total"].get<int>(), req["not_sent"].dump(),
      summary["wall_s"].get<double>(), summary["stopped"].get<bool>() ? " (stopped)" : "");
  absl::StrAppend(
      &out, absl::StrFormat("%-24s %6s %6s %9s %9s %9s %8s %9s %8s %8s %7s %6s\n", "group", "sent",
                            "errors", "TTFTp50ms", "TTFTp90ms", "TTFTp99ms", "TPOTp50", "E2Ep50ms",
                            "req/s", "tok/s", "goodput", "hit"));
  out += TableRow("all", summary["all"]);
  for (const auto& [mode, g] : summary["by_mode"].items()) out += TableRow("mode " + mode, g);
  if (summary["by_endpoint"].size() > 1) {
    for (const auto& [ep, g] : summary["by_endpoint"].items()) out += TableRow(ep, g);
  }
  absl::StrAppend(&out, absl::StrFormat("goodput = share of sent requests answered with TTFT <= "
                                        "%.0f ms; hit = turns after the first whose history "
                                        "the worker restored\n",
                                        summary["slo_ttft_ms"].get<double>()));
  return out;
}

json CompareModes(const std::vector<std::pair<std::string, json>>& runs) {
  const json* recompute = nullptr;
  const json* load = nullptr;
  for (const auto& [mode, s] : runs) {
    if (mode == "recompute") recompute = &s;
    if (mode == "load") load = &s;
  }
  auto p = [](const json* s, const char* dist, const char* q) {
    return s == nullptr ? 0.0 : At((*s)["all"], dist, q);
  };
  json out = json::array();
  for (const auto& [mode, s] : runs) {
    const json& g = s["all"];
    json row = {{"mode", mode},
                {"sent", s["requests"]["sent"]},
                {"ok", s["requests"]["ok"]},
                {"ttft_p50_ms", At(g, "ttft_ms", "p50")},
                {"ttft_p99_ms", At(g, "ttft_ms", "p99")},
                {"restored_ttft_p50_ms", At(g, "ttft_restored_ms", "p50")},
                {"restored_ttft_p99_ms", At(g, "ttft_restored_ms", "p99")},
                {"e2e_p50_ms", At(g, "e2e_ms", "p50")},
                {"throughput_rps", g["throughput_rps"]},
                {"goodput_fraction", g["goodput_fraction"]},
                {"restore", g["restore"]},
                {"history_hit_rate", g["history_hit_rate"]}};
    for (const auto& [name, base] : {std::pair<const char*, const json*>{"recompute", recompute},
                                     std::pair<const char*, const json*>{"load", load}}) {
      row[absl::StrCat("vs_", name)] = {
          {"restored_ttft_p50",
           RatioOrNull(p(base, "ttft_restored_ms", "p50"), At(g, "ttft_restored_ms", "p50"))},
          {"restored_ttft_p99",
           RatioOrNull(p(base, "ttft_restored_ms", "p99"), At(g, "ttft_restored_ms", "p99"))},
          {"ttft_p50", RatioOrNull(p(base, "ttft_ms", "p50"), At(g, "ttft_ms", "p50"))},
          {"e2e_p50", RatioOrNull(p(base, "e2e_ms", "p50"), At(g, "e2e_ms", "p50"))}};
    }
    out.push_back(std::move(row));
  }
  return out;
}

std::string FormatCompareTable(const json& compare) {
  std::string out = absl::StrFormat("%-11s %7s %9s %9s %9s %9s %9s %9s %9s %9s %7s %6s\n", "mode",
                                    "ok/sent", "TTFTp50", "restTTFT50", "restTTFT99", "xrec p50",
                                    "xrec p99", "xload p50", "xload p99", "E2Ep50", "req/s", "hit");
  for (const json& row : compare) {
    out += absl::StrFormat(
        "%-11s %3d/%-3d %9.1f %9.1f %9.1f %9s %9s %9s %9s %9.1f %7.2f %6s\n",
        row["mode"].get<std::string>(), row["ok"].get<int>(), row["sent"].get<int>(),
        row["ttft_p50_ms"].get<double>(), row["restored_ttft_p50_ms"].get<double>(),
        row["restored_ttft_p99_ms"].get<double>(),
        RatioText(row["vs_recompute"]["restored_ttft_p50"]),
        RatioText(row["vs_recompute"]["restored_ttft_p99"]),
        RatioText(row["vs_load"]["restored_ttft_p50"]),
        RatioText(row["vs_load"]["restored_ttft_p99"]), row["e2e_p50_ms"].get<double>(),
        row["throughput_rps"].get<double>(),
        absl::StrFormat("%.0f%%", 100.0 * row["history_hit_rate"].get<double>()));
  }
  out +=
      "TTFT in ms, client side (first streamed token); restTTFT = turns after the first (they "
      "restore a history);\nxrec / xload = that run's restTTFT / this mode's (above 1: this mode "
      "is faster).\n";
  return out;
}

absl::Status WriteTextFile(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  out << content;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("write to ", path, " failed"));
  return absl::OkStatus();
}

}  // namespace krul::loadtest
