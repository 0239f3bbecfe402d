// The worker's shared state, independent of the wire protocol: the model,
// tokenizer and chat template, one compute backend (+ restorer) per
// admission slot on the configured device (CPU or CUDA, backend_factory.h),
// the cost model, the conversation store, the persister and the metrics.
// The HTTP and gRPC front ends both call StartChat.
//
// Thread-safe.
#ifndef KRUL_SERVICES_WORKER_CORE_WORKER_CORE_H_
#define KRUL_SERVICES_WORKER_CORE_WORKER_CORE_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "krul/compress/compressor.h"
#include "krul/engine/backend.h"
#include "krul/model/model.h"
#include "krul/model/tokenizer.h"
#include "krul/restore/cost_model.h"
#include "krul/restore/restorer.h"
#include "worker/api/openai_api.h"
#include "worker/core/admission.h"
#include "worker/core/chat_template.h"
#include "worker/core/metrics.h"
#include "worker/core/options.h"
#include "worker/session/conversation_store.h"
#include "worker/session/persister.h"

namespace krul::worker {

class Session;

// One engine slot: used by one request at a time (AdmissionTicket::slot).
struct EngineSlot {
  std::unique_ptr<ComputeBackend> backend;
  std::unique_ptr<Restorer> restorer;  // drives `backend`
};

class WorkerCore {
 public:
  // Loads the model and tokenizer, creates the engines on options.device,
  // probes the compute cost, calibrates krul-fixed's pairs and starts the
  // persister. `store` is owned. Errors: INVALID_ARGUMENT for options that
  // do not validate; FAILED_PRECONDITION for device=cuda without a CUDA
  // build or a usable GPU; errors of the model / tokenizer loaders and the
  // backends.
  static absl::StatusOr<std::unique_ptr<WorkerCore>> Create(
      const WorkerOptions& options, std::unique_ptr<ConversationStore> store);
  ~WorkerCore();

  // Waits for an engine (bounded queue) and runs the request up to its
  // first token. NOT_FOUND for another model name, INVALID_ARGUMENT for a
  // request that does not fit (context overflow, mode override not
  // allowed), RESOURCE_EXHAUSTED when the queue is full or the wait timed
  // out, CANCELLED while shutting down; engine errors as INTERNAL.
  // `accepted` is when the request arrived (TTFT counts from it).
  absl::StatusOr<std::unique_ptr<Session>> StartChat(const ChatRequest& request,
                                                     absl::Time accepted);

  // Stops admitting requests and waits up to `timeout` for queued persists.
  void Shutdown(absl::Duration timeout);
  bool ready() const { return ready_.load() && !shutting_down_.load(); }

  const WorkerOptions& options() const { return options_; }
  const std::string& model_name() const { return model_name_; }
  const std::string& model_id() const { return model_id_; }
  const std::string& worker_id() const { return worker_id_; }
  void set_worker_id(std::string id) { worker_id_ = std::move(id); }
  const Model& model() const { return *model_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const ChatTemplate& chat_template() const { return *chat_template_; }
  const KvShape& shape() const { return shape_; }
  const CompressionPlan& fixed_pairs() const { return fixed_pairs_; }
  ConversationStore& store() { return *store_; }
  CostModel& cost_model() { return *cost_model_; }
  Persister& persister() { return *persister_; }
  WorkerMetrics& metrics() { return metrics_; }
  // The device the engines run on (options().device resolved).
  Device device() const { return device_; }
  Admission& admission() { return *admission_; }
  EngineSlot& slot(int index) { return slots_[index]; }

 private:
  WorkerCore() = default;
  absl::Status Init(const WorkerOptions& options, std::unique_ptr<ConversationStore> store);

  WorkerOptions options_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<ChatTemplate> chat_template_;
  std::string model_name_;
  std::string model_id_;
  std::string worker_id_;
  Device device_ = Device::kCpu;
  KvShape shape_;
  CompressionPlan fixed_pairs_;
  std::unique_ptr<PairCalibration> pair_calibration_;  // krul_calibration; null = none
  std::unique_ptr<ConversationStore> store_;
  WorkerMetrics metrics_;
  std::unique_ptr<CostModel> cost_model_;
  std::vector<EngineSlot> slots_;
  std::unique_ptr<Admission> admission_;
  std::unique_ptr<Persister> persister_;
  std::atomic<bool> ready_{false};
  std::atomic<bool> shutting_down_{false};
};

}  // namespace krul::worker

#endif  // KRUL_SERVICES_WORKER_CORE_WORKER_CORE_H_
