// Typed configuration of the inference worker. main.cc fills WorkerOptions
// from flags and calls Validate() once; nothing else parses configuration.
#ifndef KRUL_SERVICES_WORKER_CORE_OPTIONS_H_
#define KRUL_SERVICES_WORKER_CORE_OPTIONS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "krul/base/dtype.h"              // DType, ParseDType
#include "krul/engine/backend_factory.h"  // Device
#include "krul/model/model.h"
#include "krul/model/model_shape.h"  // ParseModelShape
#include "krul/restore/restore_mode.h"
#include "krul/rpc/credentials.h"

namespace krul::worker {

// How chat messages become prompt tokens (chat_template.h).
enum class ChatTemplateKind {
  kPlain,  // message texts back to back (TinyStories-style models)
  kRoles,  // "User: ...\n" / "Assistant: ..." role-tagged lines
};
std::string_view ChatTemplateName(ChatTemplateKind kind);
absl::StatusOr<ChatTemplateKind> ParseChatTemplate(std::string_view name);

struct WorkerOptions {
  // ---- model ------------------------------------------------------------
  // llama2.c .bin or GGUF file. Empty with `synthetic` set: a seeded random
  // model of shape `synthetic_shape`.
  std::string model_path;
  // llama2.c tokenizer file; empty = the vocabulary embedded in the model
  // (GGUF) or, for a synthetic model, a byte-level vocabulary.
  std::string tokenizer_path;
  bool synthetic = false;
  ModelConfig synthetic_shape;  // filled by ParseModelShape (model_shape.h)
  uint64_t synthetic_seed = 42;
  // Name reported by /v1/models and expected in requests' "model" field.
  // Empty = derived from the model file name ("synthetic" for synthetic).
  std::string model_name;
  ChatTemplateKind chat_template = ChatTemplateKind::kPlain;

  // ---- serving ----------------------------------------------------------
  std::string host = "127.0.0.1";
  int http_port = 8080;  // 0 = ephemeral (the bound port is printed)
  // API keys of the HTTP API (server/api_keys.h: `tenant:sha256hex` lines,
  // the kvstore's tokens format): every /v1 request needs
  // `Authorization: Bearer <key>`, and the key's tenant scopes the
  // conversation ids (session/tenant_scope.h). Empty: no keys, one tenant,
  // allowed only on a loopback host unless allow_insecure_http.
  std::string api_keys_file;
  // --insecure_http: serve the HTTP API without API keys off loopback
  // (anyone who reaches the port can use and probe every conversation).
  // Default: false.
  bool allow_insecure_http = false;
  int grpc_port = -1;  // -1 = no gRPC server; 0 = ephemeral
  // Requests computed at once (one engine + KV cache each). Default 1.
  int max_active = 1;
  // Requests that may wait for an engine; beyond it 429 + Retry-After.
  int max_queue = 8;
  // Longest a request waits in the queue before 429. Default 30 s.
  absl::Duration queue_timeout = absl::Seconds(30);
  // Engine threads per active request (0 = all cores).
  int threads = 1;
  // Compute device of the engines: kAuto = CUDA when the build has it and a
  // GPU is usable, else the CPU (backend_factory.h). Default kAuto.
  Device device = Device::kAuto;

  // ---- generation limits ------------------------------------------------
  int default_max_tokens = 64;
  int max_tokens_limit = 4096;  // requests asking for more get 400
  size_t max_request_bytes = 4 << 20;
  int max_messages = 1024;

  // ---- HTTP connections (server/bounded_http_server.h) --------------------
  // Connections served at once, separate from the compute slots; must
  // exceed max_active + max_queue so that probes and 429s always find a
  // slot. At the limit a new connection takes the slot of an idle or
  // still-sending one, else gets 503.
  int http_max_connections = 128;
  // A request's line and headers must arrive within this (from the accept,
  // or from the first byte of a later request on the connection).
  absl::Duration http_header_timeout = absl::Seconds(10);
  // A request's body must arrive within this after its headers (else 408).
  absl::Duration http_body_timeout = absl::Seconds(30);
  // An idle kept-alive connection is closed after this, and after
  // http_keep_alive_max_requests requests.
  absl::Duration http_keep_alive_timeout = absl::Seconds(5);
  int http_keep_alive_max_requests = 100;

  // ---- KV store and Krul --------------------------------------------------
  // kvstore gRPC addresses ("host:port"); empty = an in-process store
  // (single worker, for tests and trying things out).
  std::vector<std::string> kvstore_addresses;
  // TLS to the kvstore (CA, client certificate for mTLS) and the bearer
  // token file of `tenant` (the kvstore's --tenant_tokens_file names its
  // hash). Plaintext to a non-loopback kvstore needs allow_insecure.
  rpc::ClientTlsOptions kvstore_tls;
  std::string kvstore_token_file;
  // KV MAC keys (krul/kvformat/kv_mac.h: a master key and/or TENANT:KEY
  // lines, 64 hex digits each): versions are sealed when written and
  // verified before use, so the kvstore cannot serve forged KV. Empty: XXH3
  // checksums only (protects against accidents, not against a writer).
  std::string kv_mac_key_file;
  // TLS of the worker's own gRPC service; without it the service is
  // plaintext, accepted only on a loopback host or with allow_insecure.
  rpc::ServerTlsOptions grpc_tls;
  // --insecure: plaintext gRPC (the kvstore link, the gRPC service) off
  // loopback. Default: false.
  bool allow_insecure = false;
  std::string tenant = "default";
  RestoreMode mode = RestoreMode::kKrul;
  // Requests may pick another mode with the "krul_mode" field.
  bool allow_mode_override = true;
  // Wanted n_layers / stored layers for the pairing modes, in [1, 2].
  double target_ratio = 1.5;
  // Edge attention mass above which a layer is never shared (selector.h).
  double sensitivity_threshold = 0.9;
  // krul: each conversation's similarity is shrunk toward the calibration
  // set's (ShrinkToward, selector.h), the calibration weighing as this many
  // attention rows; 0 = the conversation's own estimate only (the paper's
  // rule). krul-bench-quality fits this weight on real conversations.
  double krul_prior_rows = 0;
  // krul: a pair calibration (reference conversations with measured pair
  // costs, krul-bench-pair-oracle --write_calibration). With it, krul
  // shares the pairs with the least cost predicted from the krul_neighbours
  // references nearest to the conversation's merge-error profile, and
  // krul-fixed (without fixed_pairs) the pairs with the least mean cost.
  // Empty = none: krul chooses by attention distance.
  std::string krul_calibration;
  int krul_neighbours = 5;
  // krul: > 0 chooses each conversation's ratio as the largest whose
  // predicted loss (mean KL per next token, ~ relative perplexity increase)
  // fits; target_ratio caps it. Needs krul_calibration. 0 = target_ratio.
  double krul_quality_budget = 0;
  // In [0, 1]: the sensitivity threshold is this quantile of the edge
  // masses of the calibration's layers (krul_calibration's, else the
  // calibration prompts'); < 0 = sensitivity_threshold as given.
  double krul_sensitivity_quantile = -1;
  // krul: weight of a conversation's earlier turns in its carried estimate,
  // per turn, in [0, 1] (1 = every turn alike).
  double krul_estimate_decay = 1.0;
  // Units of a shared pair wider than this angle (degrees) are stored
  // unmerged (compressor.h); 180 = never.
  double kv_retain_angle = 180;
  // Deadline of one store lookup or load at restore time; slower = fallback.
  absl::Duration kvstore_deadline = absl::Milliseconds(1000);
  // Deadline of one background persist.
  absl::Duration persist_deadline = absl::Seconds(10);
  // Persist jobs waiting for the background thread; beyond it a turn is
  // not persisted (counted) rather than holding memory without bound.
  int max_pending_persists = 16;
  // Restore split grid and the new-input length assumed when the split is
  // chosen at turn end.
  int granularity_tokens = 16;
  int expected_new_tokens = 64;
  // Restore reads every block a plan needs in one streamed request (true)
  // instead of one request per load step.
  bool prefetch_blocks = true;
  // Lease (kvstore Pin) the version a restore reads, for `restore_lease`,
  // so the store cannot evict it midway; released when the turn's answer
  // is out. Default: true, 10 s (the kvstore's lease granularity is 1 s).
  bool pin_restores = true;
  absl::Duration restore_lease = absl::Seconds(10);
  // An EMULATED link to the kvstore, for machines where a real one cannot
  // be made (deploy/local/testbed.sh falls back to it without root): every
  // restore's load stream is paced to latency + bytes / rate
  // (MakeLinkPacedKvSource, kv_source.h: a sleep, not a link), and so is
  // the start-up load probe. 0 Gbit/s = off (the default): loads take what
  // the real path takes.
  double emulated_link_gbit_per_s = 0;
  absl::Duration emulated_link_latency = absl::ZeroDuration();
  // KV tokens per stored block (compressor chunk) and storage type.
  int chunk_tokens = 256;
  DType kv_dtype = DType::kF32;
  // Cost model start values; the compute part is probed at start-up unless
  // probe_compute is false (then compute_* are used), and live measurements
  // refresh both unless freeze_costs.
  bool probe_compute = true;
  // Time reads of a small and a large probe version through the store at
  // start-up (the restore's own path: one streamed read, every block
  // verified; it also opens the connections) to calibrate the load cost.
  // The large version holds `probe_load_tokens` tokens of every layer
  // (0: min(seq_len, chunk_tokens)).
  bool probe_load = true;
  int probe_load_tokens = 0;
  double compute_fixed_us = 20;
  double compute_per_token_us = 5;
  double compute_per_pair_ns = 5;
  double load_latency_us = 300;  // once per restore: the load stream's first byte
  double load_gbps = 1.0;        // GB/s
  bool freeze_costs = false;
  // krul-fixed: pairs as "a:b,c:d"; empty = calibrate on built-in prompts.
  std::string fixed_pairs;

  // OK, or INVALID_ARGUMENT naming the first bad field; FAILED_PRECONDITION
  // for an HTTP API without API keys off loopback (CheckHttpWithoutApiKeys).
  absl::Status Validate() const;
};

// The rule for an HTTP API without API keys on `host`, the kvstore's
// plaintext rule's twin (krul/rpc/credentials.h): accepted on a loopback
// host, or anywhere with allow_insecure_http; returns the warning to log
// (a loud one off loopback). FAILED_PRECONDITION naming --api_keys_file and
// --insecure_http otherwise.
absl::StatusOr<std::string> CheckHttpWithoutApiKeys(std::string_view host,
                                                    bool allow_insecure_http);

// Parses "a:b,c:d" into pairs (a < b normalized). INVALID_ARGUMENT otherwise.
absl::StatusOr<std::vector<std::pair<int, int>>> ParsePairs(std::string_view text);

// The canonical name of the restore mode `name` (any spelling
// ParseRestoreMode accepts): the check the HTTP API gives the wire format
// (RequestLimits::check_mode). INVALID_ARGUMENT listing the valid names
// otherwise.
absl::StatusOr<std::string> CanonicalRestoreModeName(std::string_view name);

}  // namespace krul::worker

#endif  // KRUL_SERVICES_WORKER_CORE_OPTIONS_H_
