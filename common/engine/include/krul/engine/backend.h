// The one compute-backend interface: the Llama forward pass on some device,
// as a table of operations in the spirit of llama.cpp's backend table
// (ggml-backend-impl.h); the optional ones have a default and are marked
// "(optional)". Implemented by the CPU engine (engine_cpu.h, "cpu") and the
// CUDA engine (cuda/engine_cuda.h, "cuda"); backend_factory.h picks one.
// The restorer, the worker, the cost-model probe and the benchmarks use
// only this interface.
//
// The pieces the restore path drives, layer by layer:
//
//   hidden = CreateActivations(n)               (n, dim) fp32, backend memory
//   Embed(tokens, hidden)
//   for each layer: ComputeLayer(layer, cache, start_pos, n, hidden)
//   ComputeLogits(last row of hidden, 1, host logits)
//
// and Forward() does all of it from host token ids to host logits.
//
// Memory. `hidden` pointers are backend memory: host memory on the CPU,
// device memory on CUDA; take them from an ActivationBuffer of this backend
// (pointer arithmetic on rows is fine, dereferencing on the host is not
// portable). Token ids and logits spans are host memory. A cache must come
// from this backend's CreateKvCache.
//
// Synchronization. The CPU backend computes inside each call. The CUDA
// backend enqueues Embed and ComputeLayer on its compute queue and returns;
// errors of enqueued work surface at the next synchronizing call (Forward,
// ComputeLogits, Synchronize, SecondsBetween). Writes into a cache from
// another thread (BackendKvCache's write methods, e.g. a KvSource on the
// restore's load thread) are ordered before compute on a layer by
// AwaitWrites(cache, layer): a no-op on the CPU, an event wait on CUDA.
//
// Errors. INVALID_ARGUMENT for bad arguments (named in each method);
// FAILED_PRECONDITION, RESOURCE_EXHAUSTED and INTERNAL from a device (after
// INTERNAL the device context is unusable: destroy the backend).
//
// Ownership and threads. A backend is driven by one thread at a time and is
// not thread-safe (run one per concurrent sequence; they may share a Model
// and, on the CPU, a ThreadPool). Observers, caches and buffers are the
// caller's; caches and buffers must not outlive their backend.
#ifndef KRUL_ENGINE_BACKEND_H_
#define KRUL_ENGINE_BACKEND_H_

#include <memory>
#include <span>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/engine/backend_kv_cache.h"
#include "krul/model/model.h"

namespace krul {

// Attention probabilities of one layer for a block of consecutive queries.
struct AttentionWeights {
  int layer = 0;
  int n_heads = 0;      // query heads (a tensor-parallel rank's own)
  int query_begin = 0;  // absolute position of the first query
  int num_queries = 0;
  int context_len = 0;  // = query_begin + num_queries; keys are [0, context_len)
  // (n_heads, num_queries, context_len) row-major. Row (h, q) sums to 1 over
  // keys [0, query_begin + q] and is zero beyond (causal mask).
  const float* probs = nullptr;

  const float* row(int head, int query) const {
    return probs + (static_cast<size_t>(head) * num_queries + query) * context_len;
  }
};

// Receives attention probabilities while a backend runs (the similarity
// estimator). Blocks are observer_query_block queries of one layer.
// OnAttention is called on the thread driving the backend, with `probs` in
// host memory valid only during the call; a device backend may deliver a
// block after later blocks were computed, never out of order. A backend
// with no observer keeps no probabilities.
class AttentionObserver {
 public:
  virtual ~AttentionObserver() = default;
  virtual void OnAttention(const AttentionWeights& weights) = 0;

  // (optional; the CPU backend asks) Called just before a single-query
  // block (decode) of `layer` for the query at `position` (context_len =
  // position + 1): memory of at least n_heads * context_len floats for its
  // probabilities, or nullptr (the default) for the backend's own buffer.
  // The backend writes every float of it and passes it to the OnAttention
  // call that follows as `probs`; it keeps no pointer after that call. Lets
  // an observer that keeps the rows anyway skip copying them.
  virtual float* DecodeBuffer(int layer, int position, int n_heads, int context_len) {
    return nullptr;
  }
};

// Rows of fp32 activations (rows, dim) in a backend's memory: the residual
// stream that Embed writes and ComputeLayer transforms. Made by
// ComputeBackend::CreateActivations; must not outlive its backend.
class ActivationBuffer {
 public:
  virtual ~ActivationBuffer() = default;
  // Backend memory (see the file comment), rows() * dim floats.
  virtual float* data() = 0;
  virtual int rows() const = 0;
};

// A point in a backend's compute queue, for timing (RecordMark).
class BackendMark {
 public:
  virtual ~BackendMark() = default;
};

class ComputeBackend {
 public:
  virtual ~ComputeBackend() = default;

  // ---- description ----

  // "cpu" or "cuda".
  virtual std::string_view name() const = 0;
  // The whole model's shape (a tensor-parallel rank computes part of it).
  virtual const ModelConfig& config() const = 0;

  // ---- memory ----

  // A zeroed KV cache of this backend for `capacity_tokens` positions.
  // INVALID_ARGUMENT when the capacity is not in [1, config().seq_len];
  // allocation errors.
  virtual absl::StatusOr<std::unique_ptr<BackendKvCache>> CreateKvCache(int capacity_tokens) = 0;
  // Activations for `rows` tokens (contents undefined). INVALID_ARGUMENT
  // for rows < 1; allocation errors.
  virtual absl::StatusOr<std::unique_ptr<ActivationBuffer>> CreateActivations(int rows) = 0;

  // ---- compute ----

  // Runs host `tokens` at positions [start_pos, start_pos + n) through every
  // layer, writing their K/V into `cache`; attention sees cache positions
  // [0, start_pos + n), so [0, start_pos) must already be filled. `logits`
  // (host) is empty (no logits), vocab_size floats (the last token's) or
  // n * vocab_size floats (every token's). INVALID_ARGUMENT for a token id
  // out of range, an empty token list, positions beyond the cache, a cache
  // of another backend or shape, or a logits span of another size.
  // Synchronizes: on return the logits and the cache rows are written.
  virtual absl::Status Forward(BackendKvCache& cache, std::span<const int> tokens, int start_pos,
                               std::span<float> logits) = 0;

  // hidden (n, dim) = the embeddings of host `tokens`. INVALID_ARGUMENT for
  // an empty list, an id out of range or a null `hidden`. May only enqueue.
  virtual absl::Status Embed(std::span<const int> tokens, float* hidden) = 0;

  // Transformer block `layer` for tokens [start_pos, start_pos + n): reads
  // their input rows from `hidden` (n, dim), writes their K/V into `cache`
  // and replaces `hidden` with the block's output; attention sees cache
  // positions [0, start_pos + n). INVALID_ARGUMENT for a bad layer, range,
  // a null `hidden` or a cache of another backend or shape. May only
  // enqueue.
  virtual absl::Status ComputeLayer(int layer, BackendKvCache& cache, int start_pos, int num_tokens,
                                    float* hidden) = 0;

  // Host logits (num_rows, vocab_size) = classifier(rmsnorm_final(rows of
  // `hidden` (num_rows, dim))). INVALID_ARGUMENT for num_rows < 1, a null
  // `hidden` or logits.size() != num_rows * vocab_size. Synchronizes.
  virtual absl::Status ComputeLogits(const float* hidden, int num_rows,
                                     std::span<float> logits) = 0;

  // ---- observers ----

  // Sets (nullptr clears) the observer of every later block; not owned,
  // must stay alive until cleared. Delivers every pending block to the
  // previous observer first; returns the first error met delivering them.
  virtual absl::Status SetAttentionObserver(AttentionObserver* observer) = 0;

  // ---- synchronization ----

  // Orders every write committed to `layer` of `cache` so far (by any
  // thread, through BackendKvCache's write methods) before this backend's
  // later compute. A no-op on the CPU (writes are done when they return).
  // INVALID_ARGUMENT for a cache of another backend or a bad layer.
  virtual absl::Status AwaitWrites(BackendKvCache& cache, int layer) = 0;

  // Waits for all enqueued work, delivers pending observer blocks, and
  // returns the first error of the enqueued work.
  virtual absl::Status Synchronize() = 0;

  // ---- timing ----

  // Marks the current end of the compute queue: the CPU backend's mark is
  // the wall-clock time of the call (its work is done by then), the CUDA
  // backend's an event. Device errors.
  virtual absl::StatusOr<std::unique_ptr<BackendMark>> RecordMark() = 0;
  // Seconds the compute queue took from `from` to `to` (marks of this
  // backend, `to` recorded after `from`); waits until `to` is reached.
  // INVALID_ARGUMENT for marks of another backend.
  virtual absl::StatusOr<double> SecondsBetween(const BackendMark& from, const BackendMark& to) = 0;
};

}  // namespace krul

#endif  // KRUL_ENGINE_BACKEND_H_
