#include "worker/core/worker_core.h"

#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <random>
#include <thread>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "krul/base/log.h"
#include "krul/compress/selector.h"
#include "krul/engine/backend_factory.h"
#include "krul/engine/kv_cache.h"
#include "krul/kvformat/kv_block.h"
#include "krul/kvformat/manifest.h"
#include "krul/restore/kv_source.h"
#include "worker/api/string_view_conversion.h"
#include "worker/core/calibration.h"
#include "worker/session/session.h"

namespace krul::worker {
namespace {

// A name for the model: the file's stem ("stories260K") or "synthetic".
std::string DefaultModelName(const WorkerOptions& o) {
  if (o.synthetic) return "synthetic";
  return std::filesystem::path(o.model_path).stem().string();
}

// Identifies the weights, not the file name: KV computed by one model must
// never be restored into another. Hashes the shape and a sample of the
// weights (embedding rows, first layer, final norm).
std::string ComputeModelId(const std::string& name, const Model& model) {
  const ModelConfig& c = model.config();
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  const std::string shape = c.ToString();
  XXH3_64bits_update(state, shape.data(), shape.size());
  const size_t emb = std::min<size_t>(static_cast<size_t>(c.vocab_size) * c.dim, 1 << 16);
  XXH3_64bits_update(state, model.token_embedding(), emb * sizeof(float));
  const size_t wq = std::min<size_t>(static_cast<size_t>(c.dim) * c.dim, 1 << 16);
  XXH3_64bits_update(state, model.layer(0).wq, wq * sizeof(float));
  XXH3_64bits_update(state, model.rms_final(), static_cast<size_t>(c.dim) * sizeof(float));
  const uint64_t h = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  return absl::StrFormat("%s@%016x", name, h);
}

// Probe settings that fit the model's context.
ComputeProbeOptions ProbeOptionsFor(const ModelConfig& c) {
  ComputeProbeOptions p;
  const int s = c.seq_len;
  if (s >= 600) return p;
  p.token_counts = {std::max(2, s / 16), std::max(4, s / 4), std::max(8, s / 2)};
  p.late_start = s / 2;
  p.late_tokens = std::max(1, std::min(32, s / 8));
  return p;
}

// The load probe's result: the fitted coefficients and the large read.
struct StoreLoadProbe {
  LoadCoefficients coefficients;
  size_t large_bytes = 0;
  double large_seconds = 0;
};

// Calibrates the load cost across the real path: writes two probe versions
// shaped like a restore's (one block per layer, as a history is stored), a
// small one (1 token of one layer) and a large one (`tokens` tokens of
// every layer), times streamed reads of all of each one's blocks through
// the store (ReadBlocks: the restore's own request, blocks verified as they
// arrive; ProbeLoad keeps the fastest of three) and deletes both. The
// small read is mostly latency, the large one mostly bandwidth. Besides
// the coefficients, this opens the store's control and data-plane
// connections before the first request.
// With an emulated link (`emulated.bytes_per_second` > 0) each read is
// paced as a restore's load stream is (latency + bytes / rate, a sleep).
absl::StatusOr<StoreLoadProbe> ProbeStoreLoad(ConversationStore& store, const std::string& tenant,
                                              const std::string& model_id, int n_layers,
                                              size_t bytes_per_token, int tokens,
                                              absl::Duration deadline, const LinkModel& emulated) {
  std::mt19937_64 rng(std::random_device{}());
  const std::string prefix = absl::StrFormat("__krul_probe__/%016x", rng());
  LoadProbeOptions probe;
  probe.small_tokens = 1;
  probe.large_tokens = std::max(2, tokens);
  struct Version {
    v1::Manifest manifest;
    std::vector<uint32_t> indices;
  };
  std::vector<Version> versions;
  for (const auto& [name, layers, n] :
       {std::tuple<const char*, int, int>{"small", 1, probe.small_tokens},
        std::tuple<const char*, int, int>{"large", n_layers, probe.large_tokens}}) {
    Version v;
    v1::Manifest& m = v.manifest;
    m.mutable_key()->set_tenant(tenant);
    m.mutable_key()->set_conversation_id(absl::StrCat(prefix, "/", name));
    m.mutable_key()->set_turn(1);
    m.set_model_id(model_id);
    m.set_n_layers(static_cast<uint32_t>(layers));
    std::vector<std::string> blocks;
    for (int l = 0; l < layers; ++l) {
      auto block = EncodeRawBlock(std::string(bytes_per_token * n, static_cast<char>(0x5a + l)));
      if (!block.ok()) return block.status();
      auto ref = MakeBlockRef(static_cast<uint32_t>(blocks.size()), *block);
      if (!ref.ok()) return ref.status();
      *m.add_blocks() = *ref;
      v.indices.push_back(static_cast<uint32_t>(blocks.size()));
      blocks.push_back(*std::move(block));
    }
    if (auto s = store.Write(m, std::move(blocks), absl::Now() + deadline); !s.ok()) return s;
    // Read back what the store committed, not what was handed to it: a
    // sealing store (--kv_mac_key_file) writes a sealed copy and verifies
    // that seal on every read.
    auto stored =
        store.LookupLatest(m.key().tenant(), m.key().conversation_id(), absl::Now() + deadline);
    if (!stored.ok()) return stored.status();
    v.manifest = *std::move(stored);
    versions.push_back(std::move(v));
  }
  StoreLoadProbe result;
  auto coefficients = ProbeLoad(
      [&](int probe_tokens) -> absl::StatusOr<size_t> {
        const Version& v = versions[probe_tokens == probe.small_tokens ? 0 : 1];
        size_t bytes = 0;
        const auto t0 = std::chrono::steady_clock::now();
        absl::Status s = store.ReadBlocks(
            v.manifest, v.indices,
            [&bytes](uint32_t, std::string encoded) {
              bytes += encoded.size();
              return absl::OkStatus();
            },
            absl::Now() + deadline);
        if (!s.ok()) return s;
        if (emulated.bytes_per_second > 0) {
          std::this_thread::sleep_until(
              t0 + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                       std::chrono::duration<double>(emulated.latency_s +
                                                     bytes / emulated.bytes_per_second)));
        }
        if (probe_tokens != probe.small_tokens) {
          const double t =
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          if (result.large_seconds == 0 || t < result.large_seconds) result.large_seconds = t;
          result.large_bytes = bytes;
        }
        return bytes;
      },
      probe);
  for (const Version& v : versions) {
    store.Delete(tenant, v.manifest.key().conversation_id(), absl::Now() + deadline).IgnoreError();
  }
  if (!coefficients.ok()) return coefficients.status();
  result.coefficients = *coefficients;
  return result;
}

}  // namespace

absl::StatusOr<std::unique_ptr<WorkerCore>> WorkerCore::Create(
    const WorkerOptions& options, std::unique_ptr<ConversationStore> store) {
  if (auto s = options.Validate(); !s.ok()) return s;
  std::unique_ptr<WorkerCore> core(new WorkerCore());
  if (auto s = core->Init(options, std::move(store)); !s.ok()) return s;
  return core;
}

WorkerCore::~WorkerCore() {
  if (admission_ != nullptr) admission_->Shutdown();
  persister_.reset();  // drains, then stops
}

absl::Status WorkerCore::Init(const WorkerOptions& options,
                              std::unique_ptr<ConversationStore> store) {
  options_ = options;
  store_ = std::move(store);
  if (store_ == nullptr) store_ = std::make_unique<MemoryConversationStore>();

  absl::StatusOr<std::unique_ptr<Model>> model =
      options.synthetic ? MakeSyntheticModel(options.synthetic_shape, options.synthetic_seed)
                        : LoadModel(options.model_path);
  if (!model.ok()) return model.status();
  model_ = *std::move(model);
  const ModelConfig& config = model_->config();

  absl::StatusOr<Tokenizer> tokenizer = Tokenizer::ForModel(*model_, options.tokenizer_path);
  if (!tokenizer.ok()) {
    return absl::Status(tokenizer.status().code(),
                        absl::StrCat("tokenizer: ", tokenizer.status().message()));
  }
  tokenizer_ = std::make_unique<Tokenizer>(*std::move(tokenizer));
  chat_template_ = std::make_unique<ChatTemplate>(options.chat_template, *tokenizer_);
  model_name_ = options.model_name.empty() ? DefaultModelName(options) : options.model_name;
  model_id_ = ComputeModelId(model_name_, *model_);
  shape_ = KvShape::FromConfig(config);

  // Engines, one per admission slot, on the configured device (each CUDA
  // engine holds its own copy of the weights on the GPU).
  auto device = ResolveDevice(options.device);
  if (!device.ok()) {
    return absl::Status(device.status().code(),
                        absl::StrCat("device=", ToAbslStringView(DeviceName(options.device)), ": ",
                                     device.status().message()));
  }
  device_ = *device;
  BackendOptions backend_options;
  backend_options.device = device_;
  backend_options.cpu.num_threads = options.threads;
  for (int i = 0; i < options.max_active; ++i) {
    EngineSlot slot;
    auto backend = CreateBackend(*model_, backend_options);
    if (!backend.ok()) return backend.status();
    slot.backend = *std::move(backend);
    slots_.push_back(std::move(slot));
  }
  KRUL_LOG(INFO) << options.max_active << " engine(s) on device '" << DeviceName(device_)
                 << "' (requested '" << DeviceName(options.device) << "')";

  // Cost model: compute probed on slot 0's engine unless fixed by flags.
  CostCoefficients costs;
  costs.compute.fixed_s = options.compute_fixed_us * 1e-6;
  costs.compute.per_token_s = options.compute_per_token_us * 1e-6;
  costs.compute.per_attention_pair_s = options.compute_per_pair_ns * 1e-9;
  costs.load.latency_s = options.load_latency_us * 1e-6;
  costs.load.bytes_per_second = options.load_gbps * 1e9;
  if (options.probe_compute) {
    auto probed = ProbeCompute(*slots_[0].backend, ProbeOptionsFor(config));
    if (probed.ok()) {
      costs.compute = *probed;
    } else {
      KRUL_LOG(WARNING) << "krul-worker: compute probe failed (" << probed.status()
                        << "); using flag values";
    }
  }
  std::string load_source = "flags";
  if (options.probe_load) {
    const int tokens = options.probe_load_tokens > 0
                           ? options.probe_load_tokens
                           : std::min(config.seq_len, options.chunk_tokens);
    LinkModel emulated;
    emulated.latency_s = absl::ToDoubleSeconds(options.emulated_link_latency);
    emulated.bytes_per_second = options.emulated_link_gbit_per_s * 1e9 / 8;
    auto load = ProbeStoreLoad(*store_, options.tenant, model_id_, config.n_layers,
                               KvCache::Create(config, 1)->LayerBytes(1), tokens,
                               options.kvstore_deadline, emulated);
    if (load.ok()) {
      costs.load = load->coefficients;
      load_source = absl::StrFormat(
          "probed through the store (%s%s): %d-token history of %d layers, %.2f MB in %.2f ms",
          store_->data_plane(), emulated.bytes_per_second > 0 ? ", EMULATED link" : "", tokens,
          config.n_layers, load->large_bytes / 1e6, load->large_seconds * 1e3);
    } else {
      KRUL_LOG(WARNING) << "krul-worker: load probe failed (" << load.status()
                        << "); using flag values";
    }
  }
  KRUL_LOG(INFO) << absl::StrFormat(
      "krul-worker: cost model: compute %.1f us + %.3f us/token + %.3f ns/pair per layer (%s); "
      "load %.0f us once per restore + %.3f GB/s (%s); %s",
      costs.compute.fixed_s * 1e6, costs.compute.per_token_s * 1e6,
      costs.compute.per_attention_pair_s * 1e9, options.probe_compute ? "probed" : "flags",
      costs.load.latency_s * 1e6, costs.load.bytes_per_second / 1e9, load_source,
      options.freeze_costs ? "frozen" : "refreshed from every restore");
  auto cost_model = CostModel::Create(costs);
  if (!cost_model.ok()) return cost_model.status();
  cost_model_ = *std::move(cost_model);
  RestorerOptions restorer_options;
  restorer_options.cost_model = options.freeze_costs ? nullptr : cost_model_.get();
  for (EngineSlot& slot : slots_) {
    auto restorer = Restorer::Create(*slot.backend, restorer_options);
    if (!restorer.ok()) return restorer.status();
    slot.restorer = *std::move(restorer);
  }

  // krul-fixed's pairs: from the flag, or calibrated once here.
  fixed_pairs_ = CompressionPlan::Uncompressed(config.n_layers);
  auto flag_pairs = ParsePairs(options.fixed_pairs);
  if (!flag_pairs.ok()) return flag_pairs.status();
  if (!flag_pairs->empty()) {
    fixed_pairs_.target_ratio = options.target_ratio;
    for (const auto& [a, b] : *flag_pairs) fixed_pairs_.pairs.push_back({a, b, 0});
    if (auto s = ValidatePlan(fixed_pairs_); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("fixed_pairs: ", s.message()));
    }
  }
  // krul's pair calibration: reference conversations with measured costs.
  if (!options.krul_calibration.empty()) {
    auto read = ReadPairCalibration(options.krul_calibration);
    if (!read.ok()) return read.status();
    if (read->n_layers() != config.n_layers || read->references().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "krul_calibration ", options.krul_calibration, " has ", read->references().size(),
          " references for ", read->n_layers(), " layers; the model has ", config.n_layers));
    }
    pair_calibration_ = std::make_unique<PairCalibration>(*std::move(read));
  }
  SelectorOptions selector;
  selector.target_ratio = options.target_ratio;
  selector.sensitivity_threshold = options.sensitivity_threshold;
  if (pair_calibration_ != nullptr && options.krul_sensitivity_quantile >= 0) {
    auto threshold = pair_calibration_->EdgeMassQuantile(options.krul_sensitivity_quantile);
    if (!threshold.ok()) return threshold.status();
    selector.sensitivity_threshold = *threshold;
  }
  // The calibration estimate (built-in prompts): krul-fixed's pairs when
  // neither the flag nor a pair calibration gave them, krul's attention
  // prior when it has a weight, the edge-mass quantile without a pair
  // calibration.
  const bool fixed_needs_it =
      flag_pairs->empty() && pair_calibration_ == nullptr &&
      (options.mode == RestoreMode::kKrulFixed || options.allow_mode_override);
  const bool prior_needs_it = options.krul_prior_rows > 0 &&
                              (options.mode == RestoreMode::kKrul || options.allow_mode_override);
  const bool quantile_needs_it =
      options.krul_sensitivity_quantile >= 0 && pair_calibration_ == nullptr;
  std::optional<SimilarityEstimate> calibration;
  if (fixed_needs_it || prior_needs_it || quantile_needs_it) {
    auto estimate =
        CalibrationEstimate(*slots_[0].backend, *chat_template_, DefaultCalibrationPrompts(), 32);
    if (estimate.ok() && quantile_needs_it) {
      std::vector<double> masses;
      for (int l = 0; l < estimate->n_layers; ++l) masses.push_back(estimate->EdgeMass(l));
      std::sort(masses.begin(), masses.end());
      const double pos = options.krul_sensitivity_quantile * (masses.size() - 1);
      const size_t lo = static_cast<size_t>(pos), hi = std::min(masses.size() - 1, lo + 1);
      selector.sensitivity_threshold = masses[lo] + (pos - lo) * (masses[hi] - masses[lo]);
    }
    absl::StatusOr<CompressionPlan> calibrated =
        estimate.ok() ? SelectPlan(*estimate, selector) : estimate.status();
    if (estimate.ok()) calibration = *std::move(estimate);
    if (!calibrated.ok()) {
      KRUL_LOG(WARNING) << "krul-worker: calibration failed (" << calibrated.status()
                        << "); krul-fixed has no pairs";
    } else if (fixed_needs_it) {
      fixed_pairs_ = *std::move(calibrated);
    }
  }
  if (pair_calibration_ != nullptr && flag_pairs->empty()) {
    // krul-fixed: the best fixed choice the calibration knows, its pairs of
    // least mean measured cost.
    SelectorOptions fixed = selector;
    fixed.sensitivity_threshold = 1.0;
    fixed.quality_budget = 0;
    auto plan = SelectPlanByScore(*pair_calibration_->MeanCost(), {}, fixed);
    if (!plan.ok()) return plan.status();
    fixed_pairs_ = *std::move(plan);
  }
  if (pair_calibration_ != nullptr) {
    KRUL_LOG(INFO) << absl::StrFormat(
        "krul-worker: pair calibration %s: %d references; krul by predicted costs (%d "
        "neighbours), krul-fixed pairs [%s], sensitivity threshold %.3f, budget %g",
        options.krul_calibration, pair_calibration_->references().size(), options.krul_neighbours,
        PlanDebugString(fixed_pairs_), selector.sensitivity_threshold, options.krul_quality_budget);
  }
  selector.quality_budget = options.krul_quality_budget;

  PersisterOptions persister;
  persister.model_id = model_id_;
  persister.shape = shape_;
  persister.selector = selector;
  persister.krul_prior = std::move(calibration);
  persister.krul_prior_rows = options.krul_prior_rows;
  persister.calibration = pair_calibration_.get();
  persister.neighbours = options.krul_neighbours;
  persister.estimate_decay = options.krul_estimate_decay;
  persister.retain_angle_degrees = options.kv_retain_angle;
  persister.expected_new_tokens = options.expected_new_tokens;
  persister.granularity_tokens = options.granularity_tokens;
  persister.chunk_tokens = options.chunk_tokens;
  persister.dtype = options.kv_dtype;
  persister.max_pending = options.max_pending_persists;
  persister.deadline = options.persist_deadline;
  persister.fixed_pairs = fixed_pairs_;
  persister_ = std::make_unique<Persister>(persister, store_.get(), cost_model_.get(), &metrics_);
  admission_ = std::make_unique<Admission>(options.max_active, options.max_queue);
  ready_ = true;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Session>> WorkerCore::StartChat(const ChatRequest& request,
                                                               absl::Time accepted) {
  if (shutting_down_.load()) return absl::UnavailableError("the worker is shutting down");
  if (!request.model.empty() && request.model != model_name_) {
    return absl::NotFoundError(absl::StrCat(
        "the model '", request.model, "' does not exist; this worker serves '", model_name_, "'"));
  }
  if (request.mode.has_value()) {
    // The front ends check the name already; a caller that did not gets the same error here.
    absl::StatusOr<RestoreMode> mode = ParseRestoreMode(*request.mode);
    if (!mode.ok()) return mode.status();
    if (*mode != options_.mode && !options_.allow_mode_override) {
      return absl::InvalidArgumentError(absl::StrCat(
          "krul_mode: this worker runs mode '", ToAbslStringView(RestoreModeName(options_.mode)),
          "' and does not allow per-request modes"));
    }
  }
  metrics_.queued_requests().Increment();
  auto ticket = admission_->Acquire(options_.queue_timeout);
  metrics_.queued_requests().Decrement();
  if (!ticket.ok()) return ticket.status();
  return Session::Begin(*this, *std::move(ticket), request, accepted);
}

void WorkerCore::Shutdown(absl::Duration timeout) {
  shutting_down_ = true;
  if (admission_ != nullptr) admission_->Shutdown();
  if (persister_ != nullptr && !persister_->Drain(timeout)) {
    KRUL_LOG(WARNING) << "krul-worker: shutdown: some turns were not persisted in time";
  }
}

}  // namespace krul::worker
