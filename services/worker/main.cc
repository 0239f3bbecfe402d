// krul-worker: the stateless inference worker (docs/worker.md).
//
//   krul-worker --model stories260K.bin --tokenizer tok512.bin
//               --kvstore 127.0.0.1:7070 --http_port 8080
//   krul-worker --synthetic --http_port 0      (in-process store, ephemeral port)
//
// Prints "krul-worker listening on HOST:PORT" (and "krul-worker grpc
// listening on HOST:PORT") on stdout once it serves; SIGINT / SIGTERM stop
// it cleanly (queued persists are given --persist_deadline to finish).
// Durations are absl::Duration flags ("500ms", "30s"), sizes byte counts
// ("64K", "4M"); diagnostics go to stderr through krul/base/log.h.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "krul/base/byte_size.h"
#include "krul/base/flags_usage.h"
#include "krul/base/log.h"
#include "krul/rpc/bearer_token.h"
#include "worker/core/options.h"
#include "worker/core/worker_core.h"
#include "worker/server/api_keys.h"
#include "worker/server/grpc_service.h"
#include "worker/server/http_api.h"
#include "worker/session/conversation_store.h"
#include "worker/session/kvstore_conversation_store.h"
#include "worker/session/sealed_conversation_store.h"

ABSL_FLAG(std::string, model, "", "Model file: llama2.c checkpoint (.bin) or GGUF (.gguf)");
ABSL_FLAG(std::string, tokenizer, "",
          "llama2.c tokenizer file; default: the vocabulary embedded in the model");
ABSL_FLAG(bool, synthetic, false, "Serve a seeded random model (--synthetic_shape)");
ABSL_FLAG(std::string, synthetic_shape, "64,172,5,8,4,512,512",
          "Synthetic model shape: dim,hidden_dim,layers,heads,kv_heads,vocab,seq_len, or "
          "key=value items (dim=64,hidden=172,layers=5,heads=8,kv_heads=4,vocab=512,seq_len=512)");
ABSL_FLAG(uint64_t, seed, 42, "Seed of the synthetic model's weights");
ABSL_FLAG(std::string, model_name, "",
          "Model name in the API (default: the model file's stem, or 'synthetic')");
ABSL_FLAG(std::string, chat_template, "plain", "Chat template: plain or roles");
ABSL_FLAG(std::string, host, "127.0.0.1", "Address to listen on");
ABSL_FLAG(int, http_port, 8080, "HTTP port; 0 = ephemeral (printed on stdout)");
ABSL_FLAG(std::string, api_keys_file, "",
          "API keys of the HTTP API, one 'tenant:sha256hex' per line (krul-kvstore hash-token); "
          "every /v1 request then needs 'Authorization: Bearer <key>' and conversation ids are "
          "scoped per tenant. Empty: one tenant, loopback --host only (or --insecure_http)");
ABSL_FLAG(bool, insecure_http, false,
          "Serve the HTTP API without API keys on a non-loopback --host (INSECURE)");
ABSL_FLAG(int, grpc_port, -1, "gRPC Worker service port; 0 = ephemeral, -1 = off");
ABSL_FLAG(int, max_active, 1, "Requests computed at once (one engine each)");
ABSL_FLAG(int, max_queue, 8, "Requests that may wait for an engine; beyond: HTTP 429");
ABSL_FLAG(absl::Duration, queue_timeout, absl::Seconds(30),
          "Longest wait for an engine before HTTP 429");
ABSL_FLAG(int, threads, 1, "Engine threads per active request (0 = all cores)");
ABSL_FLAG(std::string, device, "auto",
          "Compute device: auto (CUDA when this build has it and a GPU is usable, else the "
          "CPU), cpu or cuda (an error when no GPU is usable)");
ABSL_FLAG(int, default_max_tokens, 64, "max_tokens when a request gives none");
ABSL_FLAG(int, max_tokens_limit, 4096, "Largest max_tokens a request may ask for");
ABSL_FLAG(krul::ByteSize, max_request_bytes, krul::ByteSize(4 << 20),
          "Largest request body (K/M/G suffixes), whatever its transfer encoding");
ABSL_FLAG(int, http_max_connections, 128,
          "HTTP connections served at once (separate from --max_active/--max_queue, which it "
          "must exceed); beyond, a new one takes an idle or still-sending one's slot, else 503");
ABSL_FLAG(absl::Duration, http_header_timeout, absl::Seconds(10),
          "A request's line and headers must arrive within this, else the connection closes");
ABSL_FLAG(absl::Duration, http_body_timeout, absl::Seconds(30),
          "A request's body must arrive within this after its headers, else HTTP 408");
ABSL_FLAG(absl::Duration, http_keep_alive_timeout, absl::Seconds(5),
          "An idle keep-alive connection is closed after this");
ABSL_FLAG(int, http_keep_alive_max_requests, 100,
          "Requests served on one keep-alive connection before it is closed");
ABSL_FLAG(std::string, kvstore, "",
          "Comma-separated kvstore gRPC addresses (host:port); empty = in-process store");
ABSL_FLAG(int, kvstore_replication, 1, "Replicas of each conversation across the kvstore shards");
ABSL_FLAG(bool, kvstore_ucx, true,
          "Move KV blocks over UCX (shared memory / TCP / RDMA, as UCX_TLS and UCX_NET_DEVICES "
          "allow); a kvstore without UCX gets inline gRPC instead. false: always inline gRPC");
ABSL_FLAG(std::string, tenant, "default", "Tenant the conversations are stored under");
ABSL_FLAG(std::string, kvstore_tls_ca_file, "",
          "PEM CA bundle that verifies the kvstore's certificate (turns on TLS to it)");
ABSL_FLAG(std::string, kvstore_tls_cert_file, "",
          "PEM client certificate for a kvstore that requires mutual TLS (turns on TLS)");
ABSL_FLAG(std::string, kvstore_tls_key_file, "", "PEM key of --kvstore_tls_cert_file");
ABSL_FLAG(std::string, kvstore_tls_server_name, "",
          "Name the kvstore's certificate carries, when not the host of --kvstore");
ABSL_FLAG(bool, kvstore_tls, false,
          "TLS to the kvstore with the system's CA roots (implied by the files above)");
ABSL_FLAG(std::string, kvstore_token_file, "",
          "File holding the bearer token of --tenant for the kvstore (--tenant_tokens_file there)");
ABSL_FLAG(std::string, kv_mac_key_file, "",
          "KV MAC keys (64 hex digits: a master key line, and/or TENANT:KEY lines; chmod 600): "
          "stored KV is sealed and verified so the kvstore cannot serve forged KV. The same file "
          "on every worker. Empty: checksums only (no protection against a writer)");
ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM certificate of the worker's gRPC service (with --tls_key_file: TLS)");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key of the worker's gRPC service");
ABSL_FLAG(std::string, tls_client_ca_file, "",
          "PEM CA bundle: gRPC clients must present a certificate it signed (mutual TLS)");
ABSL_FLAG(bool, insecure, false,
          "Allow plaintext gRPC off loopback (the kvstore link, the worker's gRPC service)");
ABSL_FLAG(std::string, mode, "krul",
          "Restore mode: krul, recompute, load, cake, minicache, krul-fixed");
ABSL_FLAG(bool, allow_mode_override, true, "Let requests pick a mode with \"krul_mode\"");
ABSL_FLAG(double, target_ratio, 1.5,
          "Target KV compression ratio (layers / stored layers), [1, 2]");
ABSL_FLAG(double, sensitivity_threshold, 0.9,
          "Edge attention mass above which a layer is never shared, [0, 1]");
ABSL_FLAG(double, krul_prior_rows, 0,
          "krul: weight (attention rows) of the calibration set's similarity added to each "
          "conversation's own before selecting pairs; 0 = the conversation's own only");
ABSL_FLAG(std::string, krul_calibration, "",
          "krul: pair calibration file (krul-bench-pair-oracle --write_calibration): krul "
          "shares the pairs with the least cost predicted from the nearest references, "
          "krul-fixed those with the least mean cost; empty = choose by attention");
ABSL_FLAG(int, krul_neighbours, 5, "krul: references a conversation's pair costs come from");
ABSL_FLAG(double, krul_quality_budget, 0,
          "krul: > 0 picks each conversation's ratio as the largest whose predicted loss (mean "
          "KL per token, ~ relative perplexity increase) fits, up to --target_ratio; needs "
          "--krul_calibration");
ABSL_FLAG(double, krul_sensitivity_quantile, -1,
          "In [0, 1]: the sensitivity threshold is this quantile of the calibration's layers' "
          "edge masses; < 0: --sensitivity_threshold");
ABSL_FLAG(double, krul_estimate_decay, 1.0,
          "krul: weight per turn of a conversation's earlier turns in its carried estimate");
ABSL_FLAG(double, kv_retain_angle, 180,
          "Units of a shared layer pair wider than this angle (degrees) are stored unmerged");
ABSL_FLAG(std::string, kv_dtype, "f32", "Storage type of stored KV: f32, f16, bf16");
ABSL_FLAG(bool, prefetch_blocks, true,
          "Read all blocks of a restore in one streamed request (false: one per load step)");
ABSL_FLAG(int, chunk_tokens, 256, "Tokens per stored KV block");
ABSL_FLAG(bool, pin_restores, true,
          "Lease (pin) the stored version while a restore reads it, so the kvstore cannot "
          "evict it midway");
ABSL_FLAG(absl::Duration, restore_lease, absl::Seconds(10),
          "Lease of a restore's pin (released when the answer is out), [1s, 10m]");
ABSL_FLAG(double, emulate_link_gbit_per_s, 0,
          "EMULATE a link to the kvstore of this rate (Gbit/s): restores' loads and the load "
          "probe are paced by a sleep (for machines without a real link; 0 = off)");
ABSL_FLAG(absl::Duration, emulate_link_latency, absl::ZeroDuration(),
          "Latency of the emulated link, once per restore's load stream");
ABSL_FLAG(absl::Duration, kvstore_deadline, absl::Seconds(1),
          "Deadline of a restore-time lookup or block fetch");
ABSL_FLAG(absl::Duration, persist_deadline, absl::Seconds(10), "Deadline of a background persist");
ABSL_FLAG(int, max_pending_persists, 16, "Persists that may wait; beyond, a turn is not stored");
ABSL_FLAG(int, granularity_tokens, 16, "Restore split grid (tokens)");
ABSL_FLAG(int, expected_new_tokens, 64, "New-input length assumed when the split is chosen");
ABSL_FLAG(bool, probe_compute, true, "Measure the recompute cost at start-up");
ABSL_FLAG(bool, probe_load, true,
          "Time streamed reads of a small and a large probe version through the store at "
          "start-up (also warms its connections)");
ABSL_FLAG(int, probe_load_tokens, 0,
          "Tokens of every layer in the large load probe (0: min(seq_len, chunk_tokens))");
ABSL_FLAG(double, compute_fixed_us, 20, "Cost model: fixed cost of one layer call (us)");
ABSL_FLAG(double, compute_per_token_us, 5, "Cost model: per token per layer (us)");
ABSL_FLAG(double, compute_per_pair_ns, 5, "Cost model: per attention (query, key) pair (ns)");
ABSL_FLAG(double, load_latency_us, 300,
          "Cost model: latency of a restore's load stream, paid once per restore (us)");
ABSL_FLAG(double, load_gbps, 1.0, "Cost model: load bandwidth (GB/s)");
ABSL_FLAG(bool, freeze_costs, false, "Do not refresh the cost model from live measurements");
ABSL_FLAG(std::string, fixed_pairs, "",
          "krul-fixed layer pairs 'a:b,c:d'; empty = calibrate at start-up");
ABSL_FLAG(krul::LogSeverity, log_level, krul::LogSeverity::kInfo,
          "Least severity logged on stderr: info, warning or error");

namespace {

using krul::worker::WorkerOptions;

int Fail(const absl::Status& status) {
  KRUL_LOG(ERROR) << "krul-worker: " << status;
  return 1;
}

absl::StatusOr<WorkerOptions> OptionsFromFlags() {
  WorkerOptions o;
  o.model_path = absl::GetFlag(FLAGS_model);
  o.tokenizer_path = absl::GetFlag(FLAGS_tokenizer);
  o.synthetic = absl::GetFlag(FLAGS_synthetic);
  if (o.synthetic) {
    auto shape = krul::ParseModelShape(absl::GetFlag(FLAGS_synthetic_shape));
    if (!shape.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("synthetic_shape: ", shape.status().message()));
    }
    o.synthetic_shape = *shape;
  }
  o.synthetic_seed = absl::GetFlag(FLAGS_seed);
  o.model_name = absl::GetFlag(FLAGS_model_name);
  auto tmpl = krul::worker::ParseChatTemplate(absl::GetFlag(FLAGS_chat_template));
  if (!tmpl.ok())
    return absl::InvalidArgumentError(absl::StrCat("chat_template: ", tmpl.status().message()));
  o.chat_template = *tmpl;
  o.host = absl::GetFlag(FLAGS_host);
  o.http_port = absl::GetFlag(FLAGS_http_port);
  o.api_keys_file = absl::GetFlag(FLAGS_api_keys_file);
  o.allow_insecure_http = absl::GetFlag(FLAGS_insecure_http);
  o.grpc_port = absl::GetFlag(FLAGS_grpc_port);
  o.max_active = absl::GetFlag(FLAGS_max_active);
  o.max_queue = absl::GetFlag(FLAGS_max_queue);
  o.queue_timeout = absl::GetFlag(FLAGS_queue_timeout);
  o.threads = absl::GetFlag(FLAGS_threads);
  auto device = krul::ParseDevice(absl::GetFlag(FLAGS_device));
  if (!device.ok())
    return absl::InvalidArgumentError(absl::StrCat("device: ", device.status().message()));
  o.device = *device;
  o.default_max_tokens = absl::GetFlag(FLAGS_default_max_tokens);
  o.max_tokens_limit = absl::GetFlag(FLAGS_max_tokens_limit);
  o.max_request_bytes = absl::GetFlag(FLAGS_max_request_bytes).bytes;
  o.http_max_connections = absl::GetFlag(FLAGS_http_max_connections);
  o.http_header_timeout = absl::GetFlag(FLAGS_http_header_timeout);
  o.http_body_timeout = absl::GetFlag(FLAGS_http_body_timeout);
  o.http_keep_alive_timeout = absl::GetFlag(FLAGS_http_keep_alive_timeout);
  o.http_keep_alive_max_requests = absl::GetFlag(FLAGS_http_keep_alive_max_requests);
  o.kvstore_addresses = absl::StrSplit(absl::GetFlag(FLAGS_kvstore), ',', absl::SkipWhitespace());
  o.tenant = absl::GetFlag(FLAGS_tenant);
  o.kvstore_tls.ca_file = absl::GetFlag(FLAGS_kvstore_tls_ca_file);
  o.kvstore_tls.cert_file = absl::GetFlag(FLAGS_kvstore_tls_cert_file);
  o.kvstore_tls.key_file = absl::GetFlag(FLAGS_kvstore_tls_key_file);
  o.kvstore_tls.server_name = absl::GetFlag(FLAGS_kvstore_tls_server_name);
  o.kvstore_tls.enabled = absl::GetFlag(FLAGS_kvstore_tls) || !o.kvstore_tls.ca_file.empty() ||
                          !o.kvstore_tls.cert_file.empty();
  o.kvstore_token_file = absl::GetFlag(FLAGS_kvstore_token_file);
  o.kv_mac_key_file = absl::GetFlag(FLAGS_kv_mac_key_file);
  o.grpc_tls.cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  o.grpc_tls.key_file = absl::GetFlag(FLAGS_tls_key_file);
  o.grpc_tls.client_ca_file = absl::GetFlag(FLAGS_tls_client_ca_file);
  o.allow_insecure = absl::GetFlag(FLAGS_insecure);
  auto mode = krul::ParseRestoreMode(absl::GetFlag(FLAGS_mode));
  if (!mode.ok())
    return absl::InvalidArgumentError(absl::StrCat("mode: ", mode.status().message()));
  o.mode = *mode;
  o.allow_mode_override = absl::GetFlag(FLAGS_allow_mode_override);
  o.target_ratio = absl::GetFlag(FLAGS_target_ratio);
  o.sensitivity_threshold = absl::GetFlag(FLAGS_sensitivity_threshold);
  o.krul_prior_rows = absl::GetFlag(FLAGS_krul_prior_rows);
  o.krul_calibration = absl::GetFlag(FLAGS_krul_calibration);
  o.krul_neighbours = absl::GetFlag(FLAGS_krul_neighbours);
  o.krul_quality_budget = absl::GetFlag(FLAGS_krul_quality_budget);
  o.krul_sensitivity_quantile = absl::GetFlag(FLAGS_krul_sensitivity_quantile);
  o.krul_estimate_decay = absl::GetFlag(FLAGS_krul_estimate_decay);
  o.kv_retain_angle = absl::GetFlag(FLAGS_kv_retain_angle);
  auto dtype = krul::ParseDType(absl::GetFlag(FLAGS_kv_dtype));
  if (!dtype.ok())
    return absl::InvalidArgumentError(absl::StrCat("kv_dtype: ", dtype.status().message()));
  o.kv_dtype = *dtype;
  o.chunk_tokens = absl::GetFlag(FLAGS_chunk_tokens);
  o.prefetch_blocks = absl::GetFlag(FLAGS_prefetch_blocks);
  o.pin_restores = absl::GetFlag(FLAGS_pin_restores);
  o.restore_lease = absl::GetFlag(FLAGS_restore_lease);
  o.emulated_link_gbit_per_s = absl::GetFlag(FLAGS_emulate_link_gbit_per_s);
  o.emulated_link_latency = absl::GetFlag(FLAGS_emulate_link_latency);
  o.kvstore_deadline = absl::GetFlag(FLAGS_kvstore_deadline);
  o.persist_deadline = absl::GetFlag(FLAGS_persist_deadline);
  o.max_pending_persists = absl::GetFlag(FLAGS_max_pending_persists);
  o.granularity_tokens = absl::GetFlag(FLAGS_granularity_tokens);
  o.expected_new_tokens = absl::GetFlag(FLAGS_expected_new_tokens);
  o.probe_compute = absl::GetFlag(FLAGS_probe_compute);
  o.probe_load = absl::GetFlag(FLAGS_probe_load);
  o.probe_load_tokens = absl::GetFlag(FLAGS_probe_load_tokens);
  o.compute_fixed_us = absl::GetFlag(FLAGS_compute_fixed_us);
  o.compute_per_token_us = absl::GetFlag(FLAGS_compute_per_token_us);
  o.compute_per_pair_ns = absl::GetFlag(FLAGS_compute_per_pair_ns);
  o.load_latency_us = absl::GetFlag(FLAGS_load_latency_us);
  o.load_gbps = absl::GetFlag(FLAGS_load_gbps);
  o.freeze_costs = absl::GetFlag(FLAGS_freeze_costs);
  o.fixed_pairs = absl::GetFlag(FLAGS_fixed_pairs);
  if (auto s = o.Validate(); !s.ok()) return s;
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  // --help lists the flags of this file (Abseil looks for krul-worker.cc).
  krul::InitFlagsUsage(
      "The Krul inference worker: OpenAI-compatible chat over HTTP, KV in the kvstore.\n"
      "  krul-worker --model FILE [--tokenizer FILE] [--kvstore HOST:PORT] [--http_port N]\n"
      "  krul-worker --synthetic --http_port 0",
      "worker/main.cc");
  absl::ParseCommandLine(argc, argv);
  krul::SetMinLogSeverity(absl::GetFlag(FLAGS_log_level));

  // Block the stop signals in every thread; one thread waits for them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto options = OptionsFromFlags();
  if (!options.ok()) return Fail(options.status());
  std::unique_ptr<krul::worker::ApiKeys> api_keys;
  if (!options->api_keys_file.empty()) {
    auto loaded = krul::worker::ApiKeys::FromFile(options->api_keys_file);
    if (!loaded.ok()) return Fail(loaded.status());
    api_keys = *std::move(loaded);
  }

  std::unique_ptr<krul::worker::ConversationStore> store;
  if (!options->kvstore_addresses.empty()) {
    krul::worker::KvstoreStoreOptions kv;
    kv.addresses = options->kvstore_addresses;
    kv.replication = absl::GetFlag(FLAGS_kvstore_replication);
    kv.restore_deadline = options->kvstore_deadline;
    kv.persist_deadline = options->persist_deadline;
    kv.ucx = absl::GetFlag(FLAGS_kvstore_ucx);
    kv.tls = options->kvstore_tls;
    kv.allow_insecure = options->allow_insecure;
    if (!options->kvstore_token_file.empty()) {
      auto token = krul::rpc::ReadTokenFile(options->kvstore_token_file);
      if (!token.ok()) return Fail(token.status());
      kv.bearer_token = *std::move(token);
    }
    auto remote = krul::worker::NewKvstoreConversationStore(kv);
    if (!remote.ok()) return Fail(remote.status());
    auto sealed = krul::worker::ProtectConversationStore(
        *std::move(remote), options->kv_mac_key_file, options->kvstore_addresses);
    if (!sealed.ok()) return Fail(sealed.status());
    store = *std::move(sealed);
  } else {
    KRUL_LOG(INFO) << "krul-worker: no --kvstore: conversations live in this process only";
    if (!options->kv_mac_key_file.empty()) {
      KRUL_LOG(INFO) << "krul-worker: --kv_mac_key_file has no effect without --kvstore (nothing "
                        "leaves this process)";
    }
  }
  if (store != nullptr) {
    // Opens the channels now, so the first restore does not pay for it. A
    // store that is down is not fatal: turns then recompute.
    if (auto s = store->Health(absl::Now() + absl::Seconds(2)); !s.ok()) {
      KRUL_LOG(WARNING) << "krul-worker: kvstore not reachable yet (" << s.message()
                        << "); restores fall back to recompute until it is";
    }
  }
  auto core = krul::worker::WorkerCore::Create(*options, std::move(store));
  if (!core.ok()) return Fail(core.status());

  krul::worker::HttpApi http(core->get(), std::move(api_keys));
  auto port = http.Bind(options->host, options->http_port);
  if (!port.ok()) return Fail(port.status());
  (*core)->set_worker_id(options->host + ":" + std::to_string(*port));

  std::unique_ptr<krul::worker::GrpcServer> grpc;
  if (options->grpc_port >= 0) {
    // Its own copy of the keys (each reloads the file by itself).
    std::unique_ptr<krul::worker::ApiKeys> grpc_keys;
    if (!options->api_keys_file.empty()) {
      auto loaded = krul::worker::ApiKeys::FromFile(options->api_keys_file);
      if (!loaded.ok()) return Fail(loaded.status());
      grpc_keys = *std::move(loaded);
    }
    auto started = krul::worker::GrpcServer::Start(core->get(), options->host, options->grpc_port,
                                                   options->grpc_tls, options->allow_insecure,
                                                   std::move(grpc_keys));
    if (!started.ok()) return Fail(started.status());
    grpc = *std::move(started);
  }

  std::thread server([&http] { http.Serve(); });
  KRUL_LOG(INFO) << "krul-worker: model " << (*core)->model_name() << " ("
                 << (*core)->model().config().ToString() << "), mode "
                 << krul::RestoreModeName(options->mode) << ", store "
                 << (options->kvstore_addresses.empty() ? "in-process" : "kvstore")
                 << ", data plane " << (*core)->store().data_plane();
  if (options->emulated_link_gbit_per_s > 0) {
    KRUL_LOG(WARNING) << "krul-worker: the link to the kvstore is EMULATED: loads are paced to "
                      << absl::FormatDuration(options->emulated_link_latency) << " + bytes / "
                      << options->emulated_link_gbit_per_s
                      << " Gbit/s by a sleep (not a kernel-enforced link)";
  }
  std::printf("krul-worker listening on %s:%d\n", options->host.c_str(), *port);
  if (grpc != nullptr) {
    std::printf("krul-worker grpc listening on %s:%d\n", options->host.c_str(), grpc->port());
  }
  std::fflush(stdout);

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  KRUL_LOG(INFO) << "krul-worker: signal " << signal_number << ", shutting down";
  (*core)->Shutdown(options->persist_deadline);
  if (grpc != nullptr) grpc->Stop();
  http.Stop();
  server.join();
  core->reset();
  return 0;
}
