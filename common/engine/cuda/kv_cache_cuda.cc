// The CUDA backend's KV cache (see krul/engine/cuda/kv_cache_cuda.h).
#include "krul/engine/cuda/kv_cache_cuda.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels.h"
#include "krul/engine/cuda/cuda_util.h"
#include "krul/engine/cuda/engine_cuda.h"

namespace krul {
namespace {

constexpr size_t kNormBytesPerHead = 4 * sizeof(float);  // |K_a| |K_b| |V_a| |V_b|

// Makes `buffer` hold at least `bytes` (contents are not kept).
template <typename Buffer>
absl::Status Reserve(Buffer& buffer, size_t bytes) {
  if (buffer.bytes() >= bytes) return absl::OkStatus();
  buffer = Buffer();  // free first: lower peak memory
  KRUL_ASSIGN_OR_RETURN(buffer, Buffer::Allocate(bytes));
  return absl::OkStatus();
}

}  // namespace

struct CudaKvCache::Transfer {
  int device = 0;
  cudaStream_t stream = nullptr;       // non-blocking: never waits for the compute stream
  std::vector<cudaEvent_t> written;    // per layer: its last committed write
  cudaEvent_t staging_read = nullptr;  // the last copy that read staging / converted
  CudaPinnedBuffer staging;            // fp32 K rows | V rows of the staged range
  CudaPinnedBuffer converted;          // the same rows in the cache's dtype; ReadRows' bounce
  CudaDeviceBuffer merged;             // Kdir | Vdir | norms of one WriteMergedRows
  KvLayerView staged;                  // the outstanding StageRows view (keys null: none)

  ~Transfer() {
    (void)cudaSetDevice(device);
    if (stream != nullptr) (void)cudaStreamSynchronize(stream);
    // Never a null handle: a failed call would linger as the runtime's last
    // error and be taken for a later kernel launch's.
    for (cudaEvent_t e : written) {
      if (e != nullptr) (void)cudaEventDestroy(e);
    }
    if (staging_read != nullptr) (void)cudaEventDestroy(staging_read);
    if (stream != nullptr) (void)cudaStreamDestroy(stream);
  }
};

CudaKvCache::CudaKvCache() = default;
CudaKvCache::~CudaKvCache() = default;
CudaKvCache::CudaKvCache(CudaKvCache&&) noexcept = default;
CudaKvCache& CudaKvCache::operator=(CudaKvCache&&) noexcept = default;

absl::StatusOr<CudaKvCache> CudaKvCache::Create(const CudaEngine& engine, int capacity_tokens) {
  const ModelConfig& c = engine.config();
  if (capacity_tokens < 1 || capacity_tokens > c.seq_len) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache capacity ", capacity_tokens,
                                                   " is outside [1, seq_len=", c.seq_len, "]"));
  }
  KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(engine.device()));
  CudaKvCache cache;
  cache.n_layers_ = c.n_layers;
  cache.kv_dim_ = engine.local_kv_dim();
  cache.n_kv_heads_ = engine.local_kv_heads();
  cache.capacity_ = capacity_tokens;
  cache.dtype_ = engine.dtype();
  cache.device_ = engine.device();
  cache.row_bytes_ = static_cast<size_t>(cache.kv_dim_) * DTypeSize(cache.dtype_);
  const size_t bytes = cache.row_bytes_ * capacity_tokens * 2 * c.n_layers;
  KRUL_ASSIGN_OR_RETURN(cache.storage_, CudaDeviceBuffer::Allocate(bytes));
  KRUL_CUDA_RETURN_IF_ERROR(cudaMemset(cache.storage_.data(), 0, bytes));
  // The transfer state is made up front so the load thread and the compute
  // thread never race to create it.
  auto transfer = std::make_unique<Transfer>();
  transfer->device = cache.device_;
  KRUL_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&transfer->stream, cudaStreamNonBlocking));
  KRUL_CUDA_RETURN_IF_ERROR(
      cudaEventCreateWithFlags(&transfer->staging_read, cudaEventDisableTiming));
  transfer->written.resize(c.n_layers, nullptr);
  for (cudaEvent_t& e : transfer->written) {
    KRUL_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  cache.transfer_ = std::move(transfer);
  return cache;
}

void* CudaKvCache::key(int layer, int pos) const {
  return static_cast<char*>(storage_.data()) +
         (static_cast<size_t>(layer) * 2 * capacity_ + pos) * row_bytes_;
}

void* CudaKvCache::value(int layer, int pos) const {
  return static_cast<char*>(storage_.data()) +
         ((static_cast<size_t>(layer) * 2 + 1) * capacity_ + pos) * row_bytes_;
}

absl::Status CudaKvCache::WaitForStaging() {
  KRUL_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(transfer_->staging_read));
  return absl::OkStatus();
}

absl::StatusOr<KvLayerView> CudaKvCache::StageRows(int layer, int begin, int num_tokens) {
  KRUL_RETURN_IF_ERROR(CheckRows(layer, begin, num_tokens));
  KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  KRUL_RETURN_IF_ERROR(WaitForStaging());
  const size_t floats = static_cast<size_t>(num_tokens) * kv_dim_;
  KRUL_RETURN_IF_ERROR(Reserve(transfer_->staging, 2 * floats * sizeof(float)));
  KvLayerView view;
  view.layer = layer;
  view.begin = begin;
  view.num_tokens = num_tokens;
  view.kv_dim = kv_dim_;
  view.keys = transfer_->staging.as<float>();
  view.values = view.keys + floats;
  transfer_->staged = view;
  return view;
}

absl::Status CudaKvCache::CommitRows(const KvLayerView& staged) {
  const KvLayerView& mine = transfer_->staged;
  if (mine.keys == nullptr || staged.keys != mine.keys || staged.layer != mine.layer ||
      staged.begin != mine.begin || staged.num_tokens != mine.num_tokens) {
    return absl::InvalidArgumentError("CommitRows: the view was not staged by this cache");
  }
  transfer_->staged = KvLayerView();
  if (staged.num_tokens == 0) return absl::OkStatus();
  KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  const size_t count = static_cast<size_t>(staged.num_tokens) * kv_dim_;
  const void* keys = staged.keys;
  const void* values = staged.values;
  if (dtype_ != DType::kF32) {
    KRUL_RETURN_IF_ERROR(Reserve(transfer_->converted, 2 * count * DTypeSize(dtype_)));
    uint8_t* out = transfer_->converted.as<uint8_t>();
    ConvertFromFp32(staged.keys, dtype_, out, count);
    ConvertFromFp32(staged.values, dtype_, out + count * DTypeSize(dtype_), count);
    keys = out;
    values = out + count * DTypeSize(dtype_);
  }
  const size_t bytes = staged.num_tokens * row_bytes_;
  cudaStream_t stream = transfer_->stream;
  KRUL_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(key(staged.layer, staged.begin), keys, bytes,
                                            cudaMemcpyHostToDevice, stream));
  KRUL_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(value(staged.layer, staged.begin), values, bytes,
                                            cudaMemcpyHostToDevice, stream));
  KRUL_CUDA_RETURN_IF_ERROR(cudaEventRecord(transfer_->staging_read, stream));
  KRUL_CUDA_RETURN_IF_ERROR(cudaEventRecord(transfer_->written[staged.layer], stream));
  return absl::OkStatus();
}

absl::Status CudaKvCache::WriteRows(int layer, int begin, int num_tokens, DType dtype,
                                    const void* keys, const void* values) {
  KRUL_RETURN_IF_ERROR(CheckRows(layer, begin, num_tokens));
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError("WriteRows: unknown dtype");
  }
  if (num_tokens == 0) return absl::OkStatus();
  if (dtype != dtype_) {
    // Another type: through the fp32 staging rows.
    KRUL_ASSIGN_OR_RETURN(KvLayerView view, StageRows(layer, begin, num_tokens));
    const size_t count = static_cast<size_t>(num_tokens) * kv_dim_;
    ConvertToFp32(dtype, keys, view.keys, count);
    ConvertToFp32(dtype, values, view.values, count);
    return CommitRows(view);
  }
  KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  const size_t bytes = num_tokens * row_bytes_;
  cudaStream_t stream = transfer_->stream;
  KRUL_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(key(layer, begin), keys, bytes, cudaMemcpyHostToDevice, stream));
  KRUL_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(value(layer, begin), values, bytes, cudaMemcpyHostToDevice, stream));
  KRUL_CUDA_RETURN_IF_ERROR(cudaEventRecord(transfer_->written[layer], stream));
  return absl::OkStatus();
}

absl::Status CudaKvCache::WriteMergedRows(const MergedKvRows& rows) {
  if (rows.first == rows.second) {
    return absl::InvalidArgumentError("WriteMergedRows: a pair needs two layers");
  }
  KRUL_RETURN_IF_ERROR(CheckRows(rows.first, rows.begin, rows.num_tokens));
  KRUL_RETURN_IF_ERROR(CheckRows(rows.second, rows.begin, rows.num_tokens));
  if (rows.n_kv_heads != n_kv_heads_) {
    return absl::InvalidArgumentError(absl::StrCat("WriteMergedRows: ", rows.n_kv_heads,
                                                   " KV heads; the cache holds ", n_kv_heads_));
  }
  if (rows.dtype != dtype_) {
    return absl::UnimplementedError("WriteMergedRows: rows of another dtype than the cache's");
  }
  if (rows.num_tokens == 0) return absl::OkStatus();
  KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  const int n = rows.num_tokens;
  const size_t dir_bytes = n * row_bytes_;
  const size_t norm_bytes = static_cast<size_t>(n) * n_kv_heads_ * kNormBytesPerHead;
  cudaStream_t stream = transfer_->stream;
  if (transfer_->merged.bytes() < 2 * dir_bytes + norm_bytes) {
    // The previous expansion may still read the old buffer.
    KRUL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    KRUL_RETURN_IF_ERROR(Reserve(transfer_->merged, 2 * dir_bytes + norm_bytes));
  }
  uint8_t* kdir = transfer_->merged.as<uint8_t>();
  uint8_t* vdir = kdir + dir_bytes;
  float* norms = reinterpret_cast<float*>(vdir + dir_bytes);
  // In stream order after the previous expansion: the buffer is free again.
  KRUL_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(kdir, rows.key_dirs, dir_bytes, cudaMemcpyHostToDevice, stream));
  KRUL_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(vdir, rows.value_dirs, dir_bytes, cudaMemcpyHostToDevice, stream));
  KRUL_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(norms, rows.norms, norm_bytes, cudaMemcpyHostToDevice, stream));
  KRUL_CUDA_RETURN_IF_ERROR(cuda_kernels::ExpandMergedPair(
      dtype_, kdir, vdir, norms, n, n_kv_heads_, kv_dim_ / n_kv_heads_, key(rows.first, rows.begin),
      value(rows.first, rows.begin), key(rows.second, rows.begin), value(rows.second, rows.begin),
      stream));
  KRUL_CUDA_RETURN_IF_ERROR(cudaEventRecord(transfer_->written[rows.first], stream));
  KRUL_CUDA_RETURN_IF_ERROR(cudaEventRecord(transfer_->written[rows.second], stream));
  return absl::OkStatus();
}

absl::Status CudaKvCache::WaitForWrites() {
  KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  KRUL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(transfer_->stream));
  return absl::OkStatus();
}

absl::Status CudaKvCache::ReadRows(int layer, int begin, int num_tokens, float* keys,
                                   float* values) const {
  KRUL_RETURN_IF_ERROR(CheckRows(layer, begin, num_tokens));
  if (num_tokens == 0) return absl::OkStatus();
  KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  cudaStream_t stream = transfer_->stream;
  const size_t bytes = num_tokens * row_bytes_;
  const size_t count = static_cast<size_t>(num_tokens) * kv_dim_;
  if (dtype_ == DType::kF32) {
    KRUL_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(keys, key(layer, begin), bytes, cudaMemcpyDeviceToHost, stream));
    KRUL_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(values, value(layer, begin), bytes, cudaMemcpyDeviceToHost, stream));
    KRUL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    return absl::OkStatus();
  }
  // Through the pinned bounce buffer, once no commit still reads it.
  KRUL_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(transfer_->staging_read));
  KRUL_RETURN_IF_ERROR(Reserve(transfer_->converted, 2 * bytes));
  uint8_t* bounce = transfer_->converted.as<uint8_t>();
  KRUL_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(bounce, key(layer, begin), bytes, cudaMemcpyDeviceToHost, stream));
  KRUL_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(bounce + bytes, value(layer, begin), bytes, cudaMemcpyDeviceToHost, stream));
  KRUL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  ConvertToFp32(dtype_, bounce, keys, count);
  ConvertToFp32(dtype_, bounce + bytes, values, count);
  return absl::OkStatus();
}

absl::Status CudaKvCache::OrderWritesBefore(int layer, cudaStream_t stream) {
  if (layer < 0 || layer >= n_layers_) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " is outside the cache"));
  }
  // The event's latest record: every write committed to the layer so far
  // (an event never recorded is complete).
  KRUL_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(stream, transfer_->written[layer], 0));
  return absl::OkStatus();
}

}  // namespace krul
