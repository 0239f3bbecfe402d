// krul-loadtest: replays a conversation or request trace against Krul
// workers over their public HTTP API and reports TTFT, TPOT, latency,
// throughput and goodput, with plots (docs/loadtest.md).
//
//   krul-loadtest --trace FILE [--format auto|mooncake|sharegpt|mtbench|azure]
//                 (--endpoints H:P,... [--api_key K] | --local_cluster N [--model F --tokenizer F]
//                  [--local_cluster_net loopback|testbed|auto --link_gbit_per_s G])
//                 --out DIR [--max_requests N] [--duration_s S] ...
//   krul-loadtest compare ...   the same trace once per restore mode (--modes)
//
// main() only wires: flags -> trace, targets, driver options; one run per
// mode; reports.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/api_key.h"
#include "client/driver.h"
#include "client/endpoint.h"
#include "cluster/link_size.h"
#include "cluster/local_cluster.h"
#include "cluster/netns_scope.h"
#include "cluster/testbed.h"
#include "report/metrics_scrape.h"
#include "report/plots.h"
#include "report/progress.h"
#include "report/report.h"
#include "trace/trace.h"

// ---- input --------------------------------------------------------------
ABSL_FLAG(std::string, trace, "", "Trace or conversation file (required)");
ABSL_FLAG(std::string, format, "auto", "auto, mooncake, sharegpt, mtbench or azure");
ABSL_FLAG(std::string, on_bad_record, "fail",
          "fail: stop at the first bad record; skip: count it and go on");
ABSL_FLAG(int, max_conversations, 0, "Use only the first N conversations (0 = all)");
// ---- targets ------------------------------------------------------------
ABSL_FLAG(std::string, endpoints, "", "Worker HTTP addresses host:port,... (or --local_cluster)");
ABSL_FLAG(std::string, api_key, "",
          "API key of workers that run with --api_keys_file, sent as \"Authorization: Bearer\" "
          "on every request; empty: $KRUL_API_KEY, else $OPENAI_API_KEY, else none (the "
          "environment keeps it out of ps). Never printed or written to the outputs");
ABSL_FLAG(std::string, kvstore_metrics, "",
          "With --endpoints: the kvstore's /metrics address host:port, to scrape");
ABSL_FLAG(int, local_cluster, 0,
          "Start a kvstore and N workers on 127.0.0.1 for the run and stop them after");
ABSL_FLAG(std::string, model, "",
          "--local_cluster: model file for the workers (empty: a seeded synthetic model)");
ABSL_FLAG(std::string, tokenizer, "", "--local_cluster: tokenizer file for the workers");
ABSL_FLAG(std::string, synthetic_shape, "",
          "--local_cluster without --model: the synthetic model's shape (krul-worker's flag)");
ABSL_FLAG(std::string, worker_args, "",
          "--local_cluster: more krul-worker flags, space-separated (e.g. \"--max_queue=64\")");
ABSL_FLAG(std::string, bin_dir, "",
          "--local_cluster: where krul-kvstore and krul-worker are (default: beside this binary)");
ABSL_FLAG(std::string, local_cluster_net, "loopback",
          "--local_cluster: loopback (all on 127.0.0.1); testbed (the kvstore on a storage "
          "node, the workers and this client on a compute node: two network namespaces joined "
          "by a tc-shaped link, deploy/local/testbed.sh; needs root); auto (testbed where "
          "namespaces can be made, else loopback, said so in summary.json)");
ABSL_FLAG(double, link_gbit_per_s, 0,
          "testbed: the link's rate in Gbit/s (tc, both directions); 0: sized by --link_preset "
          "when given, else 2");
ABSL_FLAG(std::string, link_preset, "",
          "testbed: size the link as scripts/demo.sh does: krul-link-size (beside this binary) "
          "measures the workers' model's recompute here and gives the rate of this preset "
          "(ib400, ib200, eth100, eth25)");
ABSL_FLAG(int, link_history_tokens, 0,
          "--link_preset: the history length sized for (0: half the model's context)");
ABSL_FLAG(double, link_delay_ms, 0,
          "testbed: one-way delay added on each end (needs tc netem; not applied without it, "
          "said so in summary.json)");
ABSL_FLAG(std::string, testbed_script, KRUL_TESTBED_SCRIPT,
          "testbed: deploy/local/testbed.sh of this source tree");
// ---- load shape ---------------------------------------------------------
ABSL_FLAG(std::string, load, "",
          "trace (open loop at trace times), poisson or closed; default: trace when the trace "
          "has timestamps, else closed");
ABSL_FLAG(double, speedup, 1.0, "trace: replay this many times faster than recorded");
ABSL_FLAG(double, rate, 1.0, "poisson: conversations started per second");
ABSL_FLAG(int, concurrency, 4, "closed: users, each running one conversation at a time");
ABSL_FLAG(int, max_inflight, 64, "trace, poisson: most requests in flight (later ones wait)");
ABSL_FLAG(double, think_time_s, 0, "Least time between an answer and the conversation's next turn");
ABSL_FLAG(int, max_requests, 0, "Send at most N requests (0 = no cap)");
ABSL_FLAG(double, duration_s, 0, "Send no new request after S seconds (0 = no cap)");
ABSL_FLAG(std::string, routing, "round_robin",
          "round_robin (per request), random, or sticky (per conversation)");
// ---- requests -----------------------------------------------------------
ABSL_FLAG(std::string, mode, "", "krul_mode of every request (empty: the workers' own)");
ABSL_FLAG(std::string, modes, "recompute,load,cake,minicache,krul-fixed,krul",
          "compare: the restore modes to run, one run each");
ABSL_FLAG(std::string, request_model, "", "\"model\" field of requests (empty: not sent)");
ABSL_FLAG(double, length_scale, 1.0,
          "Synthesized prompts (mooncake, azure): trace tokens x this = tokens sent; also scales "
          "the trace's output lengths (e.g. 0.015625 maps 512-token blocks to 8 tokens)");
ABSL_FLAG(double, tokens_per_word, 0,
          "Tokens per synthesized word on the target (0 = measure with two probe requests)");
ABSL_FLAG(int, output_tokens, 48, "max_tokens when the trace gives no output length");
ABSL_FLAG(int, max_output_tokens, 0, "Cap on max_tokens (0 = none)");
ABSL_FLAG(int, max_context_tokens, 0,
          "The target model's context: synthesized messages are cut to fit, conversations that "
          "cannot continue end (0 = no limit)");
ABSL_FLAG(double, temperature, 0, "Sampling temperature (0: greedy)");
ABSL_FLAG(double, request_timeout_s, 120, "A request that takes longer is a timeout");
ABSL_FLAG(uint64_t, seed, 1, "Seed of Poisson arrivals and random routing");
ABSL_FLAG(bool, keep_alive, false,
          "Reuse a connection per sending thread (idle ones hold a worker HTTP thread; "
          "docs/loadtest.md)");
// ---- output -------------------------------------------------------------
ABSL_FLAG(std::string, out, "", "Output directory (required)");
ABSL_FLAG(double, slo_ttft_ms, 1000, "Goodput counts answers with TTFT at most this");
ABSL_FLAG(bool, plots, true, "Render PNG plots with gnuplot");
ABSL_FLAG(std::string, progress, "auto", "auto (bar on a terminal), bar, lines or none");
ABSL_FLAG(double, settle_s, 10,
          "After a run, wait up to this long for the workers' persists before the last scrape");

namespace krul::loadtest {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::atomic<bool> g_interrupted{false};

void OnSignal(int sig) {
  g_interrupted.store(true);
  signal(sig, SIG_DFL);  // a second Ctrl-C ends the program at once
}

#define RETURN_IF_ERROR_STATUS(expr) \
  do {                               \
    absl::Status _s = (expr);        \
    if (!_s.ok()) return _s;         \
  } while (0)

// The persists the workers finished so far (all results).
double PersistCount(const std::vector<ScrapeTarget>& targets) {
  double total = 0;
  for (const ScrapeTarget& t : targets) {
    if (t.role != "worker") continue;
    auto samples = Scrape(t.endpoint);
    if (samples.ok()) total += SumSamples(*samples, "krul_worker_persists_total");
  }
  return total;
}

// Waits until the workers have persisted `answers` more turns than
// `before`, their count stops moving for a second, or `limit_s` passes: the
// stored-bytes figures are final only then.
void SettlePersists(const std::vector<ScrapeTarget>& targets, double before, int answers,
                    double limit_s) {
  const auto start = std::chrono::steady_clock::now();
  double last = -1;
  auto last_change = start;
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() <
         limit_s) {
    const double now = PersistCount(targets);
    if (now - before >= answers) return;
    if (now != last) {
      last = now;
      last_change = std::chrono::steady_clock::now();
    } else if (std::chrono::steady_clock::now() - last_change > std::chrono::seconds(1)) {
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

struct ModeRun {
  std::string mode;
  RunResult result;
  json summary;
};

absl::Status Run(bool compare) {
  // ---- flags -> options ---------------------------------------------------
  const std::string trace_path = absl::GetFlag(FLAGS_trace);
  const std::string out_dir = absl::GetFlag(FLAGS_out);
  if (trace_path.empty()) return absl::InvalidArgumentError("--trace is required");
  if (out_dir.empty()) return absl::InvalidArgumentError("--out is required");
  const int cluster_size = absl::GetFlag(FLAGS_local_cluster);
  const std::string endpoints_flag = absl::GetFlag(FLAGS_endpoints);
  if ((cluster_size > 0) == !endpoints_flag.empty()) {
    return absl::InvalidArgumentError("give exactly one of --endpoints and --local_cluster N");
  }
  const std::string net = absl::GetFlag(FLAGS_local_cluster_net);
  if (net != "loopback" && net != "testbed" && net != "auto") {
    return absl::InvalidArgumentError(
        absl::StrCat("--local_cluster_net must be loopback, testbed or auto, not '", net, "'"));
  }
  auto format = ParseTraceFormat(absl::GetFlag(FLAGS_format));
  if (!format.ok()) return format.status();
  auto policy = ParseBadRecordPolicy(absl::GetFlag(FLAGS_on_bad_record));
  if (!policy.ok()) return policy.status();
  auto routing = ParseRouting(absl::GetFlag(FLAGS_routing));
  if (!routing.ok()) return routing.status();
  auto progress_style = ParseProgressStyle(absl::GetFlag(FLAGS_progress));
  if (!progress_style.ok()) return progress_style.status();

  DriverOptions options;
  options.routing = *routing;
  options.speedup = absl::GetFlag(FLAGS_speedup);
  options.rate = absl::GetFlag(FLAGS_rate);
  options.concurrency = absl::GetFlag(FLAGS_concurrency);
  options.max_inflight = absl::GetFlag(FLAGS_max_inflight);
  options.think_time_s = absl::GetFlag(FLAGS_think_time_s);
  options.max_requests = absl::GetFlag(FLAGS_max_requests);
  options.duration_s = absl::GetFlag(FLAGS_duration_s);
  options.model = absl::GetFlag(FLAGS_request_model);
  options.output_tokens = absl::GetFlag(FLAGS_output_tokens);
  options.max_output_tokens = absl::GetFlag(FLAGS_max_output_tokens);
  options.max_context_tokens = absl::GetFlag(FLAGS_max_context_tokens);
  options.temperature = absl::GetFlag(FLAGS_temperature);
  options.seed = absl::GetFlag(FLAGS_seed);
  options.request_timeout_s = absl::GetFlag(FLAGS_request_timeout_s);
  options.keep_alive = absl::GetFlag(FLAGS_keep_alive);
  const ApiKey api_key = ResolveApiKey(absl::GetFlag(FLAGS_api_key));
  options.api_key = api_key.key;
  options.synth.length_scale = absl::GetFlag(FLAGS_length_scale);
  if (!(options.speedup > 0)) return absl::InvalidArgumentError("--speedup must be > 0");
  if (!(options.rate > 0)) return absl::InvalidArgumentError("--rate must be > 0");
  if (options.concurrency < 1) return absl::InvalidArgumentError("--concurrency must be >= 1");
  if (options.max_inflight < 1) return absl::InvalidArgumentError("--max_inflight must be >= 1");
  if (!(options.synth.length_scale > 0)) {
    return absl::InvalidArgumentError("--length_scale must be > 0");
  }
  if (options.output_tokens < 1) return absl::InvalidArgumentError("--output_tokens must be >= 1");
  if (!(options.request_timeout_s > 0)) {
    return absl::InvalidArgumentError("--request_timeout_s must be > 0");
  }

  // ---- the trace ----------------------------------------------------------
  TraceOptions trace_options;
  trace_options.on_bad_record = *policy;
  auto loaded = LoadTrace(trace_path, *format, trace_options);
  if (!loaded.ok()) return loaded.status();
  Trace trace = *std::move(loaded);
  const int max_conversations = absl::GetFlag(FLAGS_max_conversations);
  if (max_conversations > 0 && static_cast<int>(trace.conversations.size()) > max_conversations) {
    trace.conversations.resize(max_conversations);
  }
  bool synthesized = false;
  for (const Conversation& c : trace.conversations) synthesized |= c.turns.front().synthesized();
  std::printf("krul-loadtest: %s (%s): %d records, %d skipped, %zu conversations, %d turns\n",
              trace_path.c_str(), std::string(TraceFormatName(trace.format)).c_str(), trace.records,
              trace.skipped, trace.conversations.size(), trace.turns());
  for (const std::string& m : trace.skip_messages) std::printf("  skipped: %s\n", m.c_str());

  std::string shape_name = absl::GetFlag(FLAGS_load);
  if (shape_name.empty()) shape_name = trace.timed() ? "trace" : "closed";
  auto shape = ParseLoadShape(shape_name);
  if (!shape.ok()) return shape.status();
  if (*shape == LoadShape::kTrace && !trace.timed()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--load=trace needs timestamps, and ", std::string(TraceFormatName(trace.format)),
        " traces have none; use --load=closed or --load=poisson"));
  }
  options.shape = *shape;

  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", out_dir, ": ", ec.message()));

  // ---- targets ------------------------------------------------------------
  // Torn down in reverse: this thread leaves the compute namespace, the
  // cluster stops, the testbed goes (also on every error return).
  std::unique_ptr<Testbed> testbed;
  std::unique_ptr<LocalCluster> cluster;
  std::unique_ptr<NetnsScope> in_compute_node;
  json link = nullptr;
  std::vector<Endpoint> endpoints;
  std::vector<ScrapeTarget> scrape_targets;
  if (cluster_size > 0) {
    LocalClusterOptions c;
    c.bin_dir = absl::GetFlag(FLAGS_bin_dir).empty() ? SelfBinDir() : absl::GetFlag(FLAGS_bin_dir);
    c.workers = cluster_size;
    c.log_dir = (fs::path(out_dir) / "cluster").string();
    c.cancel = &g_interrupted;
    fs::create_directories(c.log_dir, ec);
    if (!absl::GetFlag(FLAGS_model).empty()) {
      c.model_args = {"--model", absl::GetFlag(FLAGS_model)};
      if (!absl::GetFlag(FLAGS_tokenizer).empty()) {
        c.model_args.insert(c.model_args.end(), {"--tokenizer", absl::GetFlag(FLAGS_tokenizer)});
      }
    } else {
      c.model_args = {"--synthetic"};
      if (!absl::GetFlag(FLAGS_synthetic_shape).empty()) {
        c.model_args.insert(c.model_args.end(),
                            {"--synthetic_shape", absl::GetFlag(FLAGS_synthetic_shape)});
      }
    }
    std::vector<std::string> user_worker_args =
        absl::StrSplit(absl::GetFlag(FLAGS_worker_args), ' ', absl::SkipWhitespace());

    link = {{"net", "loopback"}, {"kind", "none: 127.0.0.1, KV over gRPC on loopback"}};
    bool use_testbed = net == "testbed";
    if (net == "auto") {
      const absl::Status check = Testbed::Check(absl::GetFlag(FLAGS_testbed_script));
      use_testbed = check.ok();
      if (!use_testbed) {
        std::printf("krul-loadtest: %s; falling back to LOOPBACK (127.0.0.1, no shaped link)\n",
                    std::string(check.message()).c_str());
        link["fallback_from"] = "testbed";
        link["fallback_reason"] = std::string(check.message());
      }
    }
    if (use_testbed) {
      TestbedOptions t;
      t.script = absl::GetFlag(FLAGS_testbed_script);
      t.rate_gbit_per_s = absl::GetFlag(FLAGS_link_gbit_per_s);
      json sized_by = nullptr;
      if (!absl::GetFlag(FLAGS_link_preset).empty()) {
        if (t.rate_gbit_per_s > 0) {
          return absl::InvalidArgumentError("give --link_gbit_per_s or --link_preset, not both");
        }
        // krul-link-size takes the model (or the synthetic shape), not the
        // tokenizer.
        std::vector<std::string> model_args = c.model_args;
        if (model_args.front() == "--model") model_args.resize(2);
        auto sizing =
            SizeLink((fs::path(c.bin_dir) / "krul-link-size").string(), model_args,
                     absl::GetFlag(FLAGS_link_preset), absl::GetFlag(FLAGS_link_history_tokens));
        if (!sizing.ok()) return sizing.status();
        std::printf("krul-loadtest: link sizing: %s\n", sizing->sentence.c_str());
        t.rate_gbit_per_s = sizing->gbit_per_s;
        sized_by = {{"tool", "krul-link-size"},
                    {"preset", sizing->preset},
                    {"history_tokens", sizing->history_tokens},
                    {"recompute_ms", sizing->recompute_ms},
                    {"full_load_ms", sizing->full_load_ms},
                    {"sentence", sizing->sentence}};
      }
      if (t.rate_gbit_per_s <= 0) t.rate_gbit_per_s = 2;
      t.delay_ms = absl::GetFlag(FLAGS_link_delay_ms);
      t.log_path = (fs::path(c.log_dir) / "testbed.log").string();
      auto up = Testbed::Up(t);
      if (!up.ok()) {
        return absl::Status(up.status().code(),
                            absl::StrCat("--local_cluster_net=testbed: ", up.status().message(),
                                         " (--local_cluster_net=auto falls back to loopback)"));
      }
      testbed = *std::move(up);
      const TestbedLink& l = testbed->link();
      std::string kind = absl::StrFormat(
          "kernel-enforced: veth %s -> %s between network namespaces %s and %s, tc %s %s, "
          "one-way delay %g ms",
          l.compute_dev, l.storage_dev, l.compute_ns, l.storage_ns,
          l.delay_ms > 0 ? "netem" : "tbf", l.rate, l.delay_ms);
      if (l.delay_requested_ms > 0 && l.delay_ms == 0) {
        absl::StrAppendFormat(&kind, " (%g ms asked, NOT applied: no tc netem in this kernel)",
                              l.delay_requested_ms);
      }
      kind += "; KV over UCX (TCP)";
      link = {{"net", "testbed"},
              {"kind", kind},
              {"gbit_per_s", l.rate_bits_per_s / 1e9},
              {"rate", l.rate},
              {"burst_bytes", l.burst_bytes},
              {"delay_ms", l.delay_ms},
              {"delay_requested_ms", l.delay_requested_ms},
              {"netem", l.netem},
              {"testbed", l.name},
              {"storage_ns", l.storage_ns},
              {"compute_ns", l.compute_ns},
              {"storage_addr", l.storage_addr},
              {"compute_addr", l.compute_addr},
              {"kv_transport", "ucx-tcp"},
              {"sized_by", sized_by}};
      std::printf("krul-loadtest: testbed %s up: %s\n", l.name.c_str(), kind.c_str());
      c.kvstore_prefix = testbed->StoragePrefix();
      c.worker_prefix = testbed->ComputePrefix();
      c.kvstore_host = l.storage_addr;
      // UCX data plane across the veth; plaintext gRPC on the namespaces'
      // private addresses (as scripts/demo.sh runs them).
      c.extra_kvstore_args = {"--ucx", "--insecure"};
      c.extra_worker_args = {"--insecure"};
    }
    c.extra_worker_args.insert(c.extra_worker_args.end(), user_worker_args.begin(),
                               user_worker_args.end());
    std::printf("krul-loadtest: starting 1 kvstore + %d workers %s (logs in %s)\n", cluster_size,
                testbed ? "on the testbed (storage node / compute node)" : "on 127.0.0.1",
                c.log_dir.c_str());
    std::fflush(stdout);
    auto started = LocalCluster::Start(c);
    if (!started.ok()) return started.status();
    cluster = *std::move(started);
    if (testbed) {
      // The workers listen on the compute node's loopback: this thread (and
      // every thread it starts from here: senders, scrapes) moves there.
      auto entered = NetnsScope::Enter(testbed->link().compute_ns);
      if (!entered.ok()) return entered.status();
      in_compute_node = *std::move(entered);
    }
    endpoints = cluster->workers();
    if (cluster->kvstore_metrics().port > 0) {
      scrape_targets.push_back({"kvstore", cluster->kvstore_metrics()});
    }
  } else {
    auto parsed = ParseEndpoints(endpoints_flag);
    if (!parsed.ok()) return parsed.status();
    endpoints = *std::move(parsed);
    if (!absl::GetFlag(FLAGS_kvstore_metrics).empty()) {
      auto kv = ParseEndpoint(absl::GetFlag(FLAGS_kvstore_metrics));
      if (!kv.ok()) return kv.status();
      scrape_targets.push_back({"kvstore", *kv});
    }
  }
  for (const Endpoint& e : endpoints) scrape_targets.push_back({"worker", e});
  std::vector<std::string> names;
  for (const Endpoint& e : endpoints) names.push_back(e.Name());
  std::printf("krul-loadtest: workers %s%s\n", absl::StrJoin(names, ",").c_str(),
              api_key.key.empty() ? "" : absl::StrCat(", API key from ", api_key.source).c_str());

  const std::string run_prefix =
      absl::StrFormat("lt-%d", std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
  options.synth.tokens_per_word = absl::GetFlag(FLAGS_tokens_per_word);
  if (synthesized && options.synth.tokens_per_word <= 0) {
    auto measured =
        MeasureTokensPerWord(endpoints.front(), options.model, run_prefix, options.api_key);
    if (absl::IsUnauthenticated(measured.status())) {
      return absl::UnauthenticatedError(
          absl::StrCat(measured.status().message(), "; ", UnauthorizedHint(api_key)));
    }
    if (!measured.ok()) return measured.status();
    options.synth.tokens_per_word = *measured;
    std::printf("krul-loadtest: %.3f tokens per synthesized word on %s (measured)\n", *measured,
                endpoints.front().Name().c_str());
  }
  if (options.synth.tokens_per_word <= 0) options.synth.tokens_per_word = 1;

  // ---- one run per mode ---------------------------------------------------
  std::vector<std::string> modes = {absl::GetFlag(FLAGS_mode)};
  if (compare) modes = absl::StrSplit(absl::GetFlag(FLAGS_modes), ',', absl::SkipWhitespace());
  if (modes.empty()) return absl::InvalidArgumentError("--modes is empty");
  ReportOptions report_options;
  report_options.slo_ttft_ms = absl::GetFlag(FLAGS_slo_ttft_ms);

  std::vector<ModeRun> runs;
  bool refused = false;  // a run stopped on 401s: the other modes would too
  for (const std::string& mode : modes) {
    if (g_interrupted.load() || refused) break;
    const std::string label = mode.empty() ? std::string("default") : mode;
    const std::string dir = compare ? (fs::path(out_dir) / label).string() : out_dir;
    fs::create_directories(dir, ec);
    DriverOptions o = options;
    o.mode = mode;
    o.run_id = absl::StrCat(run_prefix, "-", label);
    std::printf("krul-loadtest: run %s: load %s, routing %s, %zu endpoint(s)\n", label.c_str(),
                shape_name.c_str(), std::string(RoutingName(o.routing)).c_str(), endpoints.size());
    std::fflush(stdout);

    const ScrapeRound before = ScrapeAll(scrape_targets);
    const double persists_before = PersistCount(scrape_targets);
    Driver driver(trace, endpoints, o);
    Progress progress(driver, compare ? label + " " : std::string(), *progress_style);
    std::atomic<bool> running{true};
    std::thread watcher([&] {
      while (running.load()) {
        if (g_interrupted.load()) {
          driver.Stop();
          return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    });
    progress.Start();
    RunResult result = driver.Run();
    running.store(false);
    watcher.join();
    progress.Stop();

    int answers = 0;
    for (const RequestRecord& r : result.records) answers += r.result.ok();
    SettlePersists(scrape_targets, persists_before, answers, absl::GetFlag(FLAGS_settle_s));
    const ScrapeRound after = ScrapeAll(scrape_targets);

    json summary = SummarizeRun(result, report_options);
    summary["metrics"] = SummarizeScrapes(scrape_targets, before, after);
    summary["run"] = {{"trace", trace_path},
                      {"format", TraceFormatName(trace.format)},
                      {"records", trace.records},
                      {"skipped_records", trace.skipped},
                      {"conversations", trace.conversations.size()},
                      {"mode", label},
                      {"load", shape_name},
                      {"speedup", o.speedup},
                      {"rate", o.rate},
                      {"concurrency", o.concurrency},
                      {"think_time_s", o.think_time_s},
                      {"max_requests", o.max_requests},
                      {"duration_s", o.duration_s},
                      {"routing", RoutingName(o.routing)},
                      {"endpoints", names},
                      {"local_cluster", cluster_size},
                      {"link", link},
                      {"length_scale", o.synth.length_scale},
                      {"tokens_per_word", o.synth.tokens_per_word},
                      {"max_context_tokens", o.max_context_tokens},
                      {"output_tokens", o.output_tokens},
                      {"max_output_tokens", o.max_output_tokens},
                      {"temperature", o.temperature},
                      {"keep_alive", o.keep_alive},
                      {"api_key", api_key.source},  // where it came from, never the key
                      {"run_id", o.run_id}};
    RETURN_IF_ERROR_STATUS(
        WriteTextFile((fs::path(dir) / "summary.json").string(), summary.dump(2) + "\n"));
    RETURN_IF_ERROR_STATUS(
        WriteTextFile((fs::path(dir) / "requests.csv").string(), RequestsCsv(result.records)));
    if (absl::GetFlag(FLAGS_plots)) {
      // Without --mode the plots name the mode the workers reported.
      std::string plot_label = label;
      if (mode.empty() && summary["by_mode"].size() == 1) {
        plot_label = summary["by_mode"].begin().key();
      }
      if (auto s = RenderPlots(dir, {{plot_label, &result.records}}); !s.ok()) {
        std::fprintf(stderr, "krul-loadtest: no plots for %s: %s\n", label.c_str(),
                     std::string(s.message()).c_str());
      }
    }
    std::printf("\n%s", FormatSummaryTable(summary).c_str());
    const json& metrics = summary["metrics"];
    if (metrics.contains("kvstore")) {
      std::printf("kvstore: hit rate %.1f%%, bytes by tier %s, evictions %s\n",
                  100 * metrics["kvstore"]["hit_rate"].get<double>(),
                  metrics["kvstore"]["bytes_by_tier"].dump().c_str(),
                  metrics["kvstore"]["evictions_by_tier"].dump().c_str());
    }
    if (metrics.contains("workers")) {
      std::printf("workers: restores %s, fallbacks %s, stored %.0f bytes\n",
                  metrics["workers"]["restores_by_result"].dump().c_str(),
                  metrics["workers"]["fallbacks_by_reason"].dump().c_str(),
                  metrics["workers"]["stored_bytes"].get<double>());
    }
    std::printf("wrote %s/{summary.json,requests.csv%s}\n\n", dir.c_str(),
                absl::GetFlag(FLAGS_plots) ? ",*.png" : "");
    std::fflush(stdout);
    refused = result.unauthorized;
    runs.push_back({label, std::move(result), std::move(summary)});
  }

  if (compare && !runs.empty()) {
    std::vector<std::pair<std::string, json>> summaries;
    std::vector<PlotSeries> series;
    for (const ModeRun& r : runs) {
      summaries.emplace_back(r.mode, r.summary);
      series.push_back({r.mode, &r.result.records});
    }
    const json table = CompareModes(summaries);
    RETURN_IF_ERROR_STATUS(
        WriteTextFile((fs::path(out_dir) / "compare.json").string(), table.dump(2) + "\n"));
    if (absl::GetFlag(FLAGS_plots)) {
      if (auto s = RenderPlots(out_dir, series); !s.ok()) {
        std::fprintf(stderr, "krul-loadtest: no comparison plots: %s\n",
                     std::string(s.message()).c_str());
      }
    }
    std::printf("compare (%s, %zu modes):\n%s", trace_path.c_str(), runs.size(),
                FormatCompareTable(table).c_str());
    std::printf("wrote %s/compare.json\n", out_dir.c_str());
  }
  absl::Status teardown = absl::OkStatus();
  if (in_compute_node != nullptr) teardown.Update(in_compute_node->Leave());
  if (cluster != nullptr) {
    if (auto s = cluster->Stop(); !s.ok()) {
      std::fprintf(stderr, "krul-loadtest: %s\n", std::string(s.message()).c_str());
    } else {
      std::printf("krul-loadtest: local cluster stopped\n");
    }
  }
  if (testbed != nullptr) {
    if (auto s = testbed->Down(); !s.ok()) {
      teardown.Update(s);
    } else {
      std::printf("krul-loadtest: testbed %s removed\n", testbed->link().name.c_str());
    }
  }
  if (!teardown.ok()) return teardown;
  if (refused) {
    return absl::UnauthenticatedError(
        absl::StrCat("stopped early: the first answer was HTTP 401 (unauthorized) and none "
                     "succeeded, so no more requests were sent; ",
                     UnauthorizedHint(api_key), "; partial report written"));
  }
  if (g_interrupted.load()) return absl::CancelledError("interrupted; partial report written");
  return absl::OkStatus();
}

}  // namespace
}  // namespace krul::loadtest

int main(int argc, char** argv) {
  // "compare" is a subcommand: the same flags, one run per mode.
  bool compare = false;
  std::vector<char*> args(argv, argv + argc);
  if (args.size() > 1 && std::string(args[1]) == "compare") {
    compare = true;
    args.erase(args.begin() + 1);
  }
  absl::SetProgramUsageMessage(
      "Replays a trace against Krul workers over HTTP and reports TTFT, TPOT, latency,\n"
      "throughput and goodput (docs/loadtest.md).\n"
      "  krul-loadtest --trace FILE (--endpoints H:P,... | --local_cluster N) --out DIR\n"
      "  krul-loadtest ... --local_cluster N --local_cluster_net testbed --link_preset ib400\n"
      "  krul-loadtest compare --trace FILE ... --modes recompute,load,krul");
  int n = static_cast<int>(args.size());
  absl::ParseCommandLine(n, args.data());
  signal(SIGINT, krul::loadtest::OnSignal);
  signal(SIGTERM, krul::loadtest::OnSignal);
  signal(SIGPIPE, SIG_IGN);
  const absl::Status status = krul::loadtest::Run(compare);
  if (status.ok()) return 0;
  std::fprintf(stderr, "krul-loadtest: %s\n", std::string(status.message()).c_str());
  return absl::IsCancelled(status) ? 130 : 1;
}
