// krul-replay: replays multi-turn conversations against running workers
// over their public HTTP API, once per restore mode, and prints a table per
// mode: TTFT (p50/p99) of the turns that restore a history and the speed-up
// against full recompute, KV bytes stored per turn, and agreement of the
// answers with the recompute mode (whose KV is exact).
//
//   krul-replay --workers 127.0.0.1:8081,127.0.0.1:8082
//               --conversations ../shared/data/conversations/krul_story_conversations.json
//
// Turn k+1 of a conversation goes to a different worker than turn k
// (round robin), so every restore crosses workers through the kvstore.
// Conversations advance in lockstep (turn 1 of all, then turn 2 of all, ...),
// which gives each one think time for its previous turn to be persisted.
// With --settle each answer's persist lands before the next request is
// sent, so no restore shares the link with another conversation's persist
// (a lightly loaded service: what the demo measures).
// Answers are greedy (temperature 0) and become the history of the next
// turn, as in a real chat.
//
// Agreement: for every turn after the first, the share of answer positions
// whose token equals the recompute mode's answer to the same turn (a
// shorter answer counts its missing positions as disagreeing); "exact" is
// the share of such turns that are identical. Turn 1 is the same computation
// in every mode and is left out of both TTFT and agreement.
//
// A second table shows where the restores' time went (medians of the
// workers' restore_profile: lookup and lease RPCs, the streamed block read,
// decoding, recompute, prefill) and the restores' efficiency against their
// true lower bound. --json_out writes
//   {"link": {...} | null, "modes": {MODE: {"ttft_ms_p50", "ttft_ms_p99",
//    "restore_ms_p50", "stored_bytes_per_turn", "agreement", "fallbacks",
//    ..., "profile_p50": {...}, "turns": [...]}}, "mode_order": [...]}
// with the link the caller describes (--link_*; it is not measured here).
//
// Workers with --api_keys_file need --api_key (or $KRUL_API_KEY, else
// $OPENAI_API_KEY); the first 401 before any answer ends the replay (exit
// 1) with what to fix. The key is never printed or written.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/api_key.h"
#include "client/chat_client.h"
#include "client/endpoint.h"
#include "trace/trace.h"

ABSL_FLAG(std::string, workers, "", "Comma-separated worker HTTP addresses host:port (required)");
ABSL_FLAG(std::string, api_key, "",
          "API key of workers that run with --api_keys_file, sent as \"Authorization: Bearer\" "
          "on every request; empty: $KRUL_API_KEY, else $OPENAI_API_KEY, else none. Never "
          "printed or written");
ABSL_FLAG(std::string, conversations, "",
          "ShareGPT-format JSON ([{id, conversations: [{from, value}]}]) or MT-bench JSONL "
          "({question_id, turns}); empty = a built-in synthetic set");
ABSL_FLAG(std::string, modes, "recompute,load,cake,minicache,krul-fixed,krul",
          "Restore modes to compare (recompute first: it is the reference)");
ABSL_FLAG(int, max_conversations, 12, "Conversations replayed per mode");
ABSL_FLAG(int, max_turns, 3, "User turns replayed per conversation");
ABSL_FLAG(int, max_tokens, 48, "max_tokens of every answer");
ABSL_FLAG(int, think_ms, 20, "Least time between a conversation's turns");
ABSL_FLAG(bool, settle, false,
          "After each answer, wait until its worker has persisted the turn (its "
          "krul_worker_persists_total counts it) before the next request: no restore shares the "
          "link with another conversation's persist (a lightly loaded service)");
ABSL_FLAG(std::string, model, "", "Model name to send (empty: the workers' own)");
ABSL_FLAG(std::string, run_id, "", "Prefix of conversation ids (default: time-based)");
ABSL_FLAG(std::string, json_out, "", "Also write the results as JSON to this file");
ABSL_FLAG(double, link_gbit_per_s, 0,
          "The link between workers and kvstore, as the caller set it up (Gbit/s; 0 = not "
          "described: \"link\" is null in --json_out)");
ABSL_FLAG(double, link_delay_ms, 0, "The link's one-way delay as applied (ms)");
ABSL_FLAG(bool, link_emulated, false,
          "The link is emulated (loopback with a paced source), not kernel-enforced");
ABSL_FLAG(std::string, link_kind, "", "Free-text description of the link (goes into the JSON)");

namespace {

using krul::worker::ChatClient;
using krul::worker::ChatReply;
using krul::worker::MetricValue;
using nlohmann::json;

struct Conversation {
  std::string id;
  std::vector<std::string> user_turns;
};

std::vector<Conversation> BuiltInConversations() {
  return {
      {"syn-1",
       {"Tell me a story about a little dog named Max.", "What did Max do with the ball?",
        "How did the story end?"}},
      {"syn-2",
       {"Write a story about a girl who finds a shiny stone.", "What did she do next?",
        "Who did she show it to?"}},
      {"syn-3",
       {"Tell me about a cat and a bird in the garden.", "Were they friends?",
        "Tell me one more thing that happened."}},
      {"syn-4",
       {"Once upon a time there was a big red truck.", "Where did the truck go?",
        "What happened at the end of the day?"}},
      {"syn-5",
       {"Tell me a story about Lily and her mom baking a cake.", "Did the cake taste good?",
        "What did they do after?"}},
      {"syn-6",
       {"Write a story about a boy who wants to fly a kite.", "Was it windy?", "How did he feel?"}},
      {"syn-7",
       {"Tell me a story about a small fish in a big pond.", "Who did the fish meet?",
        "What did they learn?"}},
      {"syn-8",
       {"Tell me about a bear who could not sleep.", "What helped the bear?",
        "How did the night end?"}},
  };
}

// The conversation files krul-loadtest reads (trace.h): ShareGPT-style and
// multi-turn JSON, MT-bench JSONL. Bad records are skipped with a warning.
absl::StatusOr<std::vector<Conversation>> LoadConversations(const std::string& path) {
  if (path.empty()) return BuiltInConversations();
  krul::loadtest::TraceOptions options;
  options.on_bad_record = krul::loadtest::BadRecordPolicy::kSkip;
  auto trace = krul::loadtest::LoadTrace(path, krul::loadtest::TraceFormat::kAuto, options);
  if (!trace.ok()) return trace.status();
  for (const std::string& m : trace->skip_messages) {
    std::cerr << "krul-replay: skipped " << m << "\n";
  }
  std::vector<Conversation> out;
  for (const krul::loadtest::Conversation& c : trace->conversations) {
    Conversation conv;
    conv.id = c.id;
    for (const krul::loadtest::Turn& t : c.turns) {
      if (t.synthesized()) {
        return absl::InvalidArgumentError(
            path +
            " has no text (a request trace); krul-replay replays conversations, "
            "krul-loadtest replays request traces");
      }
      conv.user_turns.push_back(t.text);
    }
    out.push_back(std::move(conv));
  }
  return out;
}

struct TurnRecord {
  std::string conversation;
  int turn = 0;
  int worker = 0;
  int http_status = 0;
  std::string error;
  double ttft_ms = 0;         // client side (first SSE byte)
  double server_ttft_ms = 0;  // worker's own measurement
  double restore_ms = 0;
  std::string restore;
  std::string fallback_reason;
  int restored_tokens = 0;
  double recomputed_tokens = 0;
  double loaded_bytes = 0;
  std::vector<int> ids;
  json profile;  // the worker's restore_profile (hits only), else null
};

// The restore_profile fields, in table order, with their column heads.
const std::vector<std::pair<std::string, std::string>>& ProfileFields() {
  static const auto* fields = new std::vector<std::pair<std::string, std::string>>{
      {"lookup_ms", "lookup"},      {"pin_ms", "lease"},     {"plan_ms", "plan"},
      {"first_block_ms", "1stBlk"}, {"blocks_ms", "blocks"}, {"load_wait_ms", "ldWait"},
      {"decode_ms", "decode"},      {"load_ms", "load"},     {"recompute_ms", "recomp"},
      {"prefill_ms", "prefill"},    {"total_ms", "total"},   {"predicted_ms", "predict"},
      {"bound_ms", "bound"},        {"efficiency", "effic"},
  };
  return *fields;
}

struct ModeResult {
  std::string mode;
  // A request was refused with 401 before any request was answered: the
  // key is missing or wrong, and the replay stops there.
  bool unauthorized = false;
  std::vector<TurnRecord> turns;
  double stored_bytes = 0;  // krul_worker_stored_bytes_total delta, all workers
  double persists = 0;
  double estimator_s = 0;   // krul_worker_estimator_seconds_total delta
  double generation_s = 0;  // krul_worker_generation_seconds_total delta
  double wall_s = 0;
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double rank = p * (v.size() - 1);
  const size_t lo = static_cast<size_t>(rank);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - lo);
}

// Persists a worker has finished or dropped (every result).
double PersistsDone(ChatClient& client) {
  auto [status, body] = client.Get("/metrics");
  if (status != 200) return -1;
  double n = 0;
  for (const char* result : {"ok", "error", "dropped"}) {
    n += MetricValue(body, "krul_worker_persists_total", std::string("result=\"") + result + "\"");
  }
  return n;
}

// Sum of a metric over every worker's /metrics.
double SumMetric(std::vector<std::unique_ptr<ChatClient>>& clients, const std::string& name,
                 const std::string& labels = "") {
  double total = 0;
  for (auto& c : clients) {
    auto [status, body] = c->Get("/metrics");
    if (status == 200) total += MetricValue(body, name, labels);
  }
  return total;
}

// Whether any request of the replay got an answer (a later 401 is then a
// key revoked mid-run, not a missing one).
bool g_answered = false;

ModeResult RunMode(const std::string& mode, const std::vector<Conversation>& conversations,
                   std::vector<std::unique_ptr<ChatClient>>& clients, const std::string& run_id) {
  ModeResult result;
  result.mode = mode;
  const double stored_before = SumMetric(clients, "krul_worker_stored_bytes_total");
  const double persists_before = SumMetric(clients, "krul_worker_persists_total", "result=\"ok\"");
  const double estimator_before = SumMetric(clients, "krul_worker_estimator_seconds_total");
  const double generation_before = SumMetric(clients, "krul_worker_generation_seconds_total");
  const auto start = std::chrono::steady_clock::now();
  const int max_turns = absl::GetFlag(FLAGS_max_turns);
  std::vector<json> histories(conversations.size(), json::array());
  std::vector<bool> alive(conversations.size(), true);
  std::vector<std::chrono::steady_clock::time_point> last_done(conversations.size());
  for (int turn = 0; turn < max_turns; ++turn) {
    for (size_t c = 0; c < conversations.size(); ++c) {
      const Conversation& conv = conversations[c];
      if (!alive[c] || turn >= static_cast<int>(conv.user_turns.size())) continue;
      const auto ready = last_done[c] + std::chrono::milliseconds(absl::GetFlag(FLAGS_think_ms));
      std::this_thread::sleep_until(ready);
      histories[c].push_back({{"role", "user"}, {"content", conv.user_turns[turn]}});
      json request = {{"messages", histories[c]},
                      {"max_tokens", absl::GetFlag(FLAGS_max_tokens)},
                      {"temperature", 0},
                      {"stream", true},
                      {"conversation_id", run_id + "/" + mode + "/" + conv.id},
                      {"krul_mode", mode},
                      {"return_token_ids", true}};
      if (!absl::GetFlag(FLAGS_model).empty()) request["model"] = absl::GetFlag(FLAGS_model);
      const int worker = static_cast<int>((c + turn) % clients.size());
      const bool settle = absl::GetFlag(FLAGS_settle);
      const double persisted_before = settle ? PersistsDone(*clients[worker]) : 0;
      ChatReply reply = clients[worker]->Chat(request);
      if (reply.http_status == 401 && !g_answered) {
        std::fprintf(stderr, "krul-replay: %s %s turn %d: HTTP 401 (unauthorized) %s\n",
                     mode.c_str(), conv.id.c_str(), turn + 1, reply.error.c_str());
        result.unauthorized = true;
        return result;
      }
      g_answered |= reply.http_status == 200;
      if (settle && reply.http_status == 200) {
        // The answer goes out before the persist; wait (bounded) for it.
        const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
        while (PersistsDone(*clients[worker]) < persisted_before + 1 &&
               std::chrono::steady_clock::now() < give_up) {
          std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
      }
      last_done[c] = std::chrono::steady_clock::now();
      TurnRecord r;
      r.conversation = conv.id;
      r.turn = turn;
      r.worker = worker;
      r.http_status = reply.http_status;
      r.error = reply.error;
      r.ttft_ms = reply.ttft_ms;
      if (reply.http_status == 200 && reply.body.contains("krul")) {
        const json& k = reply.body["krul"];
        r.server_ttft_ms = k.value("ttft_ms", 0.0);
        r.restore_ms = k.value("restore_ms", 0.0);
        r.restore = k.value("restore", "");
        if (k.contains("fallback_reason") && k["fallback_reason"].is_string()) {
          r.fallback_reason = k["fallback_reason"].get<std::string>();
        }
        r.restored_tokens = k.value("restored_tokens", 0);
        r.recomputed_tokens = k.value("recomputed_tokens", 0.0);
        r.loaded_bytes = k.value("loaded_bytes", 0.0);
        if (k.contains("completion_token_ids")) {
          r.ids = k["completion_token_ids"].get<std::vector<int>>();
        }
        if (k.contains("restore_profile") && k["restore_profile"].is_object()) {
          r.profile = k["restore_profile"];
        }
        histories[c].push_back({{"role", "assistant"}, {"content", reply.content}});
      } else {
        alive[c] = false;  // e.g. the conversation outgrew the context
        std::fprintf(stderr, "krul-replay: %s %s turn %d: HTTP %d %s\n", mode.c_str(),
                     conv.id.c_str(), turn + 1, reply.http_status, reply.error.c_str());
      }
      result.turns.push_back(std::move(r));
    }
  }
  result.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // Let the last turns' persists land before reading the byte counters.
  for (int i = 0; i < 50; ++i) {
    const double now = SumMetric(clients, "krul_worker_persists_total", "result=\"ok\"") +
                       SumMetric(clients, "krul_worker_persists_total", "result=\"error\"");
    if (now - persists_before >= static_cast<double>(result.turns.size())) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  result.stored_bytes = SumMetric(clients, "krul_worker_stored_bytes_total") - stored_before;
  result.persists =
      SumMetric(clients, "krul_worker_persists_total", "result=\"ok\"") - persists_before;
  result.estimator_s = SumMetric(clients, "krul_worker_estimator_seconds_total") - estimator_before;
  result.generation_s =
      SumMetric(clients, "krul_worker_generation_seconds_total") - generation_before;
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Replays multi-turn conversations against krul-worker(s) once per restore mode and\n"
      "prints TTFT, storage and agreement per mode.\n"
      "  krul-replay --workers HOST:PORT[,HOST:PORT...] [--conversations FILE]");
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_workers).empty()) {
    std::cerr << "krul-replay: --workers is required\n";
    return 1;
  }
  auto endpoints = krul::loadtest::ParseEndpoints(absl::GetFlag(FLAGS_workers));
  if (!endpoints.ok()) {
    std::cerr << "krul-replay: --workers: " << endpoints.status().message() << "\n";
    return 1;
  }
  const krul::loadtest::ApiKey api_key =
      krul::loadtest::ResolveApiKey(absl::GetFlag(FLAGS_api_key));
  std::vector<std::unique_ptr<ChatClient>> clients;
  for (const krul::loadtest::Endpoint& e : *endpoints) {
    clients.push_back(std::make_unique<ChatClient>(e.host, e.port, api_key.key));
  }
  auto read = LoadConversations(absl::GetFlag(FLAGS_conversations));
  if (!read.ok()) {
    std::cerr << "krul-replay: " << read.status() << "\n";
    return 1;
  }
  std::vector<Conversation> conversations = *std::move(read);
  if (static_cast<int>(conversations.size()) > absl::GetFlag(FLAGS_max_conversations)) {
    conversations.resize(absl::GetFlag(FLAGS_max_conversations));
  }
  std::string run_id = absl::GetFlag(FLAGS_run_id);
  if (run_id.empty()) {
    run_id = absl::StrFormat("replay-%d",
                             std::chrono::system_clock::now().time_since_epoch().count() / 1000000);
  }
  const std::vector<std::string> modes =
      absl::StrSplit(absl::GetFlag(FLAGS_modes), ',', absl::SkipWhitespace());
  std::cout << absl::StrFormat(
      "krul-replay: %d conversations (%s), up to %d turns, %d answer tokens, %d workers, "
      "modes %s%s\n",
      conversations.size(),
      absl::GetFlag(FLAGS_conversations).empty() ? "built-in synthetic"
                                                 : absl::GetFlag(FLAGS_conversations),
      absl::GetFlag(FLAGS_max_turns), absl::GetFlag(FLAGS_max_tokens), clients.size(),
      absl::StrJoin(modes, ","), api_key.key.empty() ? "" : ", API key from " + api_key.source);

  std::vector<ModeResult> results;
  for (const std::string& mode : modes) {
    std::cout << "  replaying mode " << mode << " ..." << std::flush;
    results.push_back(RunMode(mode, conversations, clients, run_id));
    if (results.back().unauthorized) {
      std::cout << "\n";
      std::cerr << "krul-replay: stopped: the first request was refused with HTTP 401 "
                   "(unauthorized); "
                << krul::loadtest::UnauthorizedHint(api_key) << "\n";
      return 1;
    }
    std::cout << absl::StrFormat(" %.1f s\n", results.back().wall_s);
  }

  // Reference answers: the first mode's (recompute when listed first).
  std::map<std::pair<std::string, int>, const TurnRecord*> reference;
  for (const TurnRecord& t : results.front().turns) reference[{t.conversation, t.turn}] = &t;

  double recompute_p50 = 0;
  for (const ModeResult& r : results) {
    if (r.mode == "recompute") {
      std::vector<double> ttft;
      for (const TurnRecord& t : r.turns) {
        if (t.turn > 0 && t.http_status == 200) ttft.push_back(t.ttft_ms);
      }
      recompute_p50 = Percentile(ttft, 0.5);
    }
  }

  json modes_json = json::object();
  json mode_order = json::array();
  std::map<std::string, std::map<std::string, double>> profile_p50;
  std::cout << "\nRestored turns (turn 2 and later), client-side TTFT over HTTP/SSE; "
               "agreement vs the '"
            << results.front().mode << "' answers\n";
  std::cout << absl::StrFormat("%-11s %5s %5s %9s %9s %8s %9s %8s %11s %11s %7s %6s %5s\n", "mode",
                               "turns", "hit%", "TTFTp50ms", "TTFTp99ms", "speedup", "restoreMs",
                               "recomp%", "stored/turn", "loaded/turn", "agree%", "exact%", "est%");
  for (const ModeResult& r : results) {
    std::vector<double> ttft, restore;
    std::map<std::string, std::vector<double>> profile;
    int restored_turns = 0, hits = 0, exact = 0, compared = 0, failures = 0, fallbacks = 0;
    double agree_sum = 0, recomputed = 0, history = 0, loaded = 0;
    for (const TurnRecord& t : r.turns) {
      if (t.http_status != 200) {
        ++failures;
        continue;
      }
      if (t.turn == 0) continue;
      ++restored_turns;
      ttft.push_back(t.ttft_ms);
      restore.push_back(t.restore_ms);
      hits += t.restore == "hit";
      fallbacks += t.restore == "fallback";
      if (t.profile.is_object()) {
        for (const auto& [field, head] : ProfileFields()) {
          if (t.profile.contains(field)) profile[field].push_back(t.profile[field].get<double>());
        }
      }
      recomputed += t.recomputed_tokens;
      history += t.restored_tokens;
      loaded += t.loaded_bytes;
      auto ref = reference.find({t.conversation, t.turn});
      if (ref != reference.end() && ref->second->http_status == 200) {
        const std::vector<int>& a = t.ids;
        const std::vector<int>& b = ref->second->ids;
        const size_t n = std::max(a.size(), b.size());
        size_t same = 0;
        for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) same += a[i] == b[i];
        agree_sum += n == 0 ? 1.0 : static_cast<double>(same) / n;
        exact += a == b;
        ++compared;
      }
    }
    const double p50 = Percentile(ttft, 0.5), p99 = Percentile(ttft, 0.99);
    const int turns_total = static_cast<int>(r.turns.size()) - failures;
    const double stored_per_turn = turns_total > 0 ? r.stored_bytes / turns_total : 0;
    std::cout << absl::StrFormat(
        "%-11s %5d %5.0f %9.2f %9.2f %7.2fx %9.2f %7.1f%% %9.1fKB %9.1fKB %6.1f%% %5.0f%% "
        "%4.1f%%\n",
        r.mode, restored_turns, restored_turns ? 100.0 * hits / restored_turns : 0.0, p50, p99,
        p50 > 0 && recompute_p50 > 0 ? recompute_p50 / p50 : 0.0, Percentile(restore, 0.5),
        history > 0 ? 100.0 * recomputed / history : 0.0, stored_per_turn / 1024.0,
        restored_turns ? loaded / restored_turns / 1024.0 : 0.0,
        compared ? 100.0 * agree_sum / compared : 0.0, compared ? 100.0 * exact / compared : 0.0,
        r.generation_s > 0 ? 100.0 * r.estimator_s / r.generation_s : 0.0);
    if (failures > 0) {
      std::cout << absl::StrFormat("%-11s %d request(s) failed (see stderr)\n", "", failures);
    }
    json turns = json::array();
    for (const TurnRecord& t : r.turns) {
      turns.push_back({{"conversation", t.conversation},
                       {"turn", t.turn + 1},
                       {"worker", t.worker},
                       {"http_status", t.http_status},
                       {"ttft_ms", t.ttft_ms},
                       {"server_ttft_ms", t.server_ttft_ms},
                       {"restore_ms", t.restore_ms},
                       {"restore", t.restore},
                       {"fallback_reason", t.fallback_reason},
                       {"restored_tokens", t.restored_tokens},
                       {"recomputed_tokens", t.recomputed_tokens},
                       {"loaded_bytes", t.loaded_bytes},
                       {"completion_tokens", t.ids.size()},
                       {"restore_profile", t.profile}});
    }
    json p50s = json::object();
    for (const auto& [field, values] : profile) {
      p50s[field] = Percentile(values, 0.5);
      profile_p50[r.mode][field] = Percentile(values, 0.5);
    }
    mode_order.push_back(r.mode);
    modes_json[r.mode] = {
        {"ttft_ms_p50", p50},
        {"ttft_ms_p99", p99},
        {"restore_ms_p50", Percentile(restore, 0.5)},
        {"restore_ms_p99", Percentile(restore, 0.99)},
        {"stored_bytes_per_turn", stored_per_turn},
        {"stored_bytes", r.stored_bytes},
        {"agreement", compared ? agree_sum / compared : 0.0},
        {"exact_turns", compared ? static_cast<double>(exact) / compared : 0.0},
        {"fallbacks", fallbacks},
        {"failed_requests", failures},
        {"restored_turns", restored_turns},
        {"hit_rate", restored_turns ? static_cast<double>(hits) / restored_turns : 0},
        {"speedup_vs_recompute", p50 > 0 ? recompute_p50 / p50 : 0.0},
        {"recomputed_share", history > 0 ? recomputed / history : 0.0},
        {"estimator_overhead", r.generation_s > 0 ? r.estimator_s / r.generation_s : 0.0},
        {"profile_p50", p50s},
        {"turns", turns}};
  }
  std::cout << "speedup = recompute TTFT p50 / mode TTFT p50; recomp% = history tokens "
               "recomputed (mean over layers);\nstored/turn = KV bytes persisted per turn; est% = "
               "similarity-estimator time / prefill+decode engine time.\n";
  // Where the restores' time went (medians over each mode's hits).
  std::cout << "\nRestore profile, medians over the hits (ms; effic = true lower bound / restore "
               "time, restorer.h)\n";
  std::cout << absl::StrFormat("%-11s", "mode");
  for (const auto& [field, head] : ProfileFields()) std::cout << absl::StrFormat(" %7s", head);
  std::cout << "\n";
  for (const ModeResult& r : results) {
    std::cout << absl::StrFormat("%-11s", r.mode);
    for (const auto& [field, head] : ProfileFields()) {
      auto it = profile_p50[r.mode].find(field);
      if (it == profile_p50[r.mode].end()) {
        std::cout << absl::StrFormat(" %7s", "-");
      } else {
        std::cout << absl::StrFormat(field == "efficiency" ? " %7.3f" : " %7.2f", it->second);
      }
    }
    std::cout << "\n";
  }
  std::cout << "lookup/lease: RPCs before the restore; plan: re-planning at restore time; "
               "1stBlk/blocks: streamed\nread start to the first/last block arriving; "
               "ldWait/decode: load steps waiting for / decoding blocks;\nload: load stream busy; "
               "recomp: history recompute; prefill: new input + logits (waits included);\n"
               "total: restore + prefill; predict: the plan's prediction of total; bound: true "
               "lower bound of total.\n";
  if (!absl::GetFlag(FLAGS_json_out).empty()) {
    json link = nullptr;
    if (absl::GetFlag(FLAGS_link_gbit_per_s) > 0) {
      link = {{"emulated", absl::GetFlag(FLAGS_link_emulated)},
              {"gbit_per_s", absl::GetFlag(FLAGS_link_gbit_per_s)},
              {"delay_ms", absl::GetFlag(FLAGS_link_delay_ms)},
              {"kind", absl::GetFlag(FLAGS_link_kind)}};
    }
    json report = {{"link", link}, {"modes", modes_json}, {"mode_order", mode_order}};
    std::ofstream out(absl::GetFlag(FLAGS_json_out));
    out << report.dump(2) << "\n";
    if (!out) {
      std::cerr << "krul-replay: cannot write " << absl::GetFlag(FLAGS_json_out) << "\n";
      return 1;
    }
  }
  // A conversation that outgrows the model's context ends there (400) and
  // is not a failure of the system.
  int failed = 0;
  for (const ModeResult& r : results) {
    for (const TurnRecord& t : r.turns) {
      failed += t.http_status != 200 &&
                !(t.http_status == 400 && t.error.find("context_length") != std::string::npos);
    }
  }
  return failed == 0 ? 0 : 2;
}
