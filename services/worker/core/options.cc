#include "worker/core/options.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "worker/api/string_view_conversion.h"

namespace krul::worker {
namespace {

absl::Status Invalid(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", problem));
}

bool ParseInt(std::string_view text, int* out) {
  while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
  while (!text.empty() && text.back() == ' ') text.remove_suffix(1);
  if (text.empty()) return false;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), *out);
  return ec == std::errc() && ptr == text.data() + text.size();
}

}  // namespace

std::string_view ChatTemplateName(ChatTemplateKind kind) {
  return kind == ChatTemplateKind::kPlain ? "plain" : "roles";
}

absl::StatusOr<ChatTemplateKind> ParseChatTemplate(std::string_view name) {
  if (name == "plain") return ChatTemplateKind::kPlain;
  if (name == "roles") return ChatTemplateKind::kRoles;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown chat template '", std::string(name), "'; expected plain or roles"));
}

absl::StatusOr<std::vector<std::pair<int, int>>> ParsePairs(std::string_view text) {
  std::vector<std::pair<int, int>> pairs;
  if (text.empty()) return pairs;
  std::vector<std::string> items = absl::StrSplit(std::string(text), ',');
  for (const std::string& item : items) {
    std::vector<std::string> ab = absl::StrSplit(item, ':');
    int a = 0, b = 0;
    if (ab.size() != 2 || !ParseInt(ab[0], &a) || !ParseInt(ab[1], &b) || a < 0 || b < 0 ||
        a == b) {
      return absl::InvalidArgumentError(
          absl::StrCat("pair '", item, "' is not of the form a:b with distinct layers >= 0"));
    }
    pairs.emplace_back(std::min(a, b), std::max(a, b));
  }
  return pairs;
}

absl::StatusOr<std::string> CanonicalRestoreModeName(std::string_view name) {
  absl::StatusOr<RestoreMode> mode = ParseRestoreMode(name);
  if (!mode.ok()) return mode.status();
  return std::string(RestoreModeName(*mode));
}

absl::StatusOr<std::string> CheckHttpWithoutApiKeys(std::string_view host,
                                                    bool allow_insecure_http) {
  const absl::string_view h = ToAbslStringView(host);
  if (rpc::IsLoopbackHost(h)) {
    return absl::StrCat("the HTTP API on ", h,
                        " has no API keys: every local caller is one tenant (--api_keys_file)");
  }
  if (allow_insecure_http) {
    return absl::StrCat("INSECURE: the HTTP API on ", h,
                        " has no API keys (--insecure_http): anyone who reaches it can use, "
                        "invalidate and probe every conversation");
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "the HTTP API on ", h,
      " (not loopback) needs API keys: give --api_keys_file (tenant:sha256hex lines, see "
      "'krul-kvstore hash-token'), or --insecure_http to serve it unauthenticated"));
}

absl::Status WorkerOptions::Validate() const {
  if (synthetic) {
    if (auto s = synthetic_shape.Validate(); !s.ok()) {
      return Invalid("synthetic_shape", s.message());
    }
    if (!model_path.empty()) return Invalid("model", "give either a model file or --synthetic");
  } else if (model_path.empty()) {
    return Invalid("model", "required (a llama2.c .bin or GGUF file), or use --synthetic");
  }
  if (host.empty()) return Invalid("host", "empty");
  if (api_keys_file.empty()) {
    if (auto rule = CheckHttpWithoutApiKeys(host, allow_insecure_http); !rule.ok()) {
      return rule.status();
    }
  }
  if (kvstore_tls.cert_file.empty() != kvstore_tls.key_file.empty()) {
    return Invalid("kvstore_tls_cert_file", "give it with --kvstore_tls_key_file, or neither");
  }
  if (grpc_tls.cert_file.empty() != grpc_tls.key_file.empty()) {
    return Invalid("tls_cert_file", "give it with --tls_key_file, or neither");
  }
  if (http_port < 0 || http_port > 65535) return Invalid("http_port", "outside [0, 65535]");
  if (grpc_port < -1 || grpc_port > 65535) return Invalid("grpc_port", "outside [-1, 65535]");
  if (max_active < 1 || max_active > 256) return Invalid("max_active", "outside [1, 256]");
  if (max_queue < 0 || max_queue > 100000) return Invalid("max_queue", "outside [0, 100000]");
  if (queue_timeout <= absl::ZeroDuration()) return Invalid("queue_timeout", "must be > 0");
  if (threads < 0 || threads > 1024) return Invalid("threads", "outside [0, 1024]");
  if (max_tokens_limit < 1) return Invalid("max_tokens_limit", "must be >= 1");
  if (default_max_tokens < 1 || default_max_tokens > max_tokens_limit) {
    return Invalid("default_max_tokens", "outside [1, max_tokens_limit]");
  }
  if (max_request_bytes < 1024) return Invalid("max_request_bytes", "must be >= 1024");
  if (max_messages < 1) return Invalid("max_messages", "must be >= 1");
  if (http_max_connections <= max_active + max_queue || http_max_connections > 100000) {
    return Invalid("http_max_connections",
                   absl::StrCat("must exceed max_active + max_queue (", max_active + max_queue,
                                ") so that probes and 429s find a slot, and be <= 100000"));
  }
  if (http_header_timeout <= absl::ZeroDuration()) {
    return Invalid("http_header_timeout", "must be > 0");
  }
  if (http_body_timeout <= absl::ZeroDuration()) return Invalid("http_body_timeout", "must be > 0");
  if (http_keep_alive_timeout <= absl::ZeroDuration()) {
    return Invalid("http_keep_alive_timeout", "must be > 0");
  }
  if (http_keep_alive_max_requests < 1) {
    return Invalid("http_keep_alive_max_requests", "must be >= 1");
  }
  for (const std::string& a : kvstore_addresses) {
    if (a.empty() || a.find(':') == std::string::npos) {
      return Invalid("kvstore", absl::StrCat("address '", a, "' is not host:port"));
    }
  }
  if (tenant.empty() || tenant.size() > 128) return Invalid("tenant", "must have 1..128 bytes");
  if (!(target_ratio >= 1.0 && target_ratio <= 2.0)) {
    return Invalid("target_ratio", "outside [1, 2]");
  }
  if (!(sensitivity_threshold >= 0.0 && sensitivity_threshold <= 1.0)) {
    return Invalid("sensitivity_threshold", "outside [0, 1]");
  }
  if (!(krul_prior_rows >= 0.0 && std::isfinite(krul_prior_rows))) {
    return Invalid("krul_prior_rows", "must be a finite number >= 0");
  }
  if (krul_neighbours < 1) return Invalid("krul_neighbours", "must be >= 1");
  if (!(krul_quality_budget >= 0.0 && std::isfinite(krul_quality_budget))) {
    return Invalid("krul_quality_budget", "must be a finite number >= 0");
  }
  if (krul_quality_budget > 0 && krul_calibration.empty()) {
    return Invalid("krul_quality_budget", "needs krul_calibration (predicted pair costs)");
  }
  if (!(krul_sensitivity_quantile <= 1.0) || !std::isfinite(krul_sensitivity_quantile)) {
    return Invalid("krul_sensitivity_quantile", "must be <= 1 (< 0: off)");
  }
  if (!(krul_estimate_decay >= 0.0 && krul_estimate_decay <= 1.0)) {
    return Invalid("krul_estimate_decay", "outside [0, 1]");
  }
  if (!(kv_retain_angle >= 0.0 && kv_retain_angle <= 180.0)) {
    return Invalid("kv_retain_angle", "outside [0, 180]");
  }
  if (kvstore_deadline <= absl::ZeroDuration()) return Invalid("kvstore_deadline", "must be > 0");
  if (persist_deadline <= absl::ZeroDuration()) return Invalid("persist_deadline", "must be > 0");
  if (restore_lease < absl::Seconds(1) || restore_lease > absl::Minutes(10)) {
    return Invalid("restore_lease", "outside [1s, 10m]");
  }
  if (probe_load_tokens < 0) return Invalid("probe_load_tokens", "must be >= 0");
  if (!(emulated_link_gbit_per_s >= 0) || !std::isfinite(emulated_link_gbit_per_s)) {
    return Invalid("emulate_link_gbit_per_s", "must be a finite number >= 0");
  }
  if (emulated_link_latency < absl::ZeroDuration()) {
    return Invalid("emulate_link_latency", "must be >= 0");
  }
  if (max_pending_persists < 1) return Invalid("max_pending_persists", "must be >= 1");
  if (granularity_tokens < 1) return Invalid("granularity_tokens", "must be >= 1");
  if (expected_new_tokens < 0) return Invalid("expected_new_tokens", "must be >= 0");
  if (chunk_tokens < 1) return Invalid("chunk_tokens", "must be >= 1");
  for (double v : {compute_fixed_us, compute_per_token_us, compute_per_pair_ns, load_latency_us}) {
    if (!std::isfinite(v) || v < 0) return Invalid("compute_*/load_latency_us", "must be >= 0");
  }
  if (!std::isfinite(load_gbps) || load_gbps <= 0) return Invalid("load_gbps", "must be > 0");
  if (auto pairs = ParsePairs(fixed_pairs); !pairs.ok()) {
    return Invalid("fixed_pairs", pairs.status().message());
  }
  return absl::OkStatus();
}

}  // namespace krul::worker
