// NCCL tensor parallelism (see krul/cuda_tensor_parallel.h).
//
// NCCL is opened with dlopen so that neither the build nor a one-GPU run
// needs it. The few entry points used are declared here by their C ABI
// (stable across NCCL 2.x): ncclResult_t, ncclDataType_t and ncclRedOp_t are
// C enums passed as int; ncclSuccess = 0, ncclFloat32 = 7, ncclSum = 0.
#include "krul/engine/cuda/tensor_parallel.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "krul/engine/cuda/cuda_util.h"

namespace krul {
namespace {

struct NcclComm;  // opaque ncclComm
using NcclCommT = NcclComm*;
constexpr int kNcclSuccess = 0;
constexpr int kNcclFloat32 = 7;
constexpr int kNcclSum = 0;

struct NcclApi {
  int (*comm_init_all)(NcclCommT* comms, int ndev, const int* devlist) = nullptr;
  int (*comm_destroy)(NcclCommT comm) = nullptr;
  int (*all_reduce)(const void* send, void* recv, size_t count, int datatype, int op,
                    NcclCommT comm, cudaStream_t stream) = nullptr;
  const char* (*get_error_string)(int result) = nullptr;
};

// Loads NCCL once per process; later calls return the same answer.
absl::StatusOr<const NcclApi*> LoadNccl() {
  static std::once_flag once;
  static NcclApi api;
  static absl::Status status;
  std::call_once(once, [] {
    const char* env = std::getenv("KRUL_NCCL_LIBRARY");
    const std::string path = env != nullptr && *env != '\0' ? env : "libnccl.so.2";
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* why = dlerror();
      status = absl::UnavailableError(
          absl::StrCat("cannot load NCCL (", path, "): ", why != nullptr ? why : "unknown error",
                       "; set KRUL_NCCL_LIBRARY to libnccl.so.2's path for tensor parallelism"));
      return;
    }
    api.comm_init_all =
        reinterpret_cast<decltype(api.comm_init_all)>(dlsym(handle, "ncclCommInitAll"));
    api.comm_destroy =
        reinterpret_cast<decltype(api.comm_destroy)>(dlsym(handle, "ncclCommDestroy"));
    api.all_reduce = reinterpret_cast<decltype(api.all_reduce)>(dlsym(handle, "ncclAllReduce"));
    api.get_error_string =
        reinterpret_cast<decltype(api.get_error_string)>(dlsym(handle, "ncclGetErrorString"));
    if (api.comm_init_all == nullptr || api.comm_destroy == nullptr || api.all_reduce == nullptr ||
        api.get_error_string == nullptr) {
      status = absl::UnavailableError(absl::StrCat(path, " lacks an NCCL entry point"));
    }
    // The handle stays open for the process's lifetime.
  });
  if (!status.ok()) return status;
  return &api;
}

absl::Status NcclStatus(const NcclApi& api, int result, std::string_view what) {
  if (result == kNcclSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(std::string(what), ": NCCL error ", result, " (",
                                          api.get_error_string(result), ")"));
}

class NcclTpComm final : public CudaTpComm {
 public:
  NcclTpComm(const NcclApi& api, NcclCommT comm, int rank, int world)
      : api_(api), comm_(comm), rank_(rank), world_(world) {}
  ~NcclTpComm() override { api_.comm_destroy(comm_); }

  int rank() const override { return rank_; }
  int world() const override { return world_; }
  absl::Status AllReduceSum(float* data, size_t count, cudaStream_t stream) override {
    return NcclStatus(api_,
                      api_.all_reduce(data, data, count, kNcclFloat32, kNcclSum, comm_, stream),
                      "ncclAllReduce");
  }

 private:
  const NcclApi& api_;
  NcclCommT comm_;
  const int rank_;
  const int world_;
};

}  // namespace

// ---------------------------------------------------------------------------
// CudaTpGroup

absl::StatusOr<std::unique_ptr<CudaTpGroup>> CudaTpGroup::Create(std::span<const int> devices) {
  if (devices.empty()) return absl::InvalidArgumentError("no devices for tensor parallelism");
  for (size_t i = 0; i < devices.size(); ++i) {
    if (devices[i] < 0) return absl::InvalidArgumentError("negative device index");
    for (size_t j = 0; j < i; ++j) {
      if (devices[i] == devices[j]) {
        return absl::InvalidArgumentError(absl::StrCat("device ", devices[i], " listed twice"));
      }
    }
  }
  std::unique_ptr<CudaTpGroup> group(new CudaTpGroup());
  group->devices_.assign(devices.begin(), devices.end());
  if (devices.size() == 1) return group;  // world size 1: no NCCL
  auto api = LoadNccl();
  if (!api.ok()) return api.status();
  std::vector<NcclCommT> comms(devices.size(), nullptr);
  KRUL_RETURN_IF_ERROR(NcclStatus(
      **api,
      (*api)->comm_init_all(comms.data(), static_cast<int>(devices.size()), group->devices_.data()),
      "ncclCommInitAll"));
  for (size_t r = 0; r < comms.size(); ++r) {
    group->comms_.push_back(std::make_unique<NcclTpComm>(**api, comms[r], static_cast<int>(r),
                                                         static_cast<int>(comms.size())));
  }
  return group;
}

CudaTpGroup::~CudaTpGroup() = default;

CudaTpComm* CudaTpGroup::comm(int rank) const {
  return comms_.empty() ? nullptr : comms_[rank].get();
}

// ---------------------------------------------------------------------------
// CudaTpEngine

namespace {

// Fills `group_out` and `engines` (one engine per rank, made by `make`).
template <typename MakeEngine>
absl::Status BuildTpEngine(std::span<const int> devices, const CudaEngineOptions& base,
                           MakeEngine make, std::unique_ptr<CudaTpGroup>& group_out,
                           std::vector<std::unique_ptr<CudaEngine>>& engines) {
  auto group = CudaTpGroup::Create(devices);
  if (!group.ok()) return group.status();
  for (int r = 0; r < (*group)->world(); ++r) {
    CudaEngineOptions options = base;
    options.device = (*group)->device(r);
    options.tp = (*group)->comm(r);
    auto engine = make(options);
    if (!engine.ok()) return engine.status();
    engines.push_back(std::move(*engine));
  }
  group_out = std::move(*group);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaTpEngine>> CudaTpEngine::Create(const Model& model,
                                                                   std::span<const int> devices,
                                                                   const CudaEngineOptions& base) {
  std::unique_ptr<CudaTpEngine> tp(new CudaTpEngine());
  auto built = BuildTpEngine(
      devices, base, [&](const CudaEngineOptions& o) { return CudaEngine::Create(model, o); },
      tp->group_, tp->engines_);
  if (!built.ok()) return built;
  return tp;
}

absl::StatusOr<std::unique_ptr<CudaTpEngine>> CudaTpEngine::CreateSynthetic(
    const ModelConfig& config, uint64_t seed, std::span<const int> devices,
    const CudaEngineOptions& base) {
  std::unique_ptr<CudaTpEngine> tp(new CudaTpEngine());
  auto built = BuildTpEngine(
      devices, base,
      [&](const CudaEngineOptions& o) { return CudaEngine::CreateSynthetic(config, seed, o); },
      tp->group_, tp->engines_);
  if (!built.ok()) return built;
  return tp;
}

CudaTpEngine::~CudaTpEngine() {
  // Engines (their streams) go before the communicators they use.
  engines_.clear();
  group_.reset();
}

absl::StatusOr<std::vector<CudaKvCache>> CudaTpEngine::CreateCaches(int capacity_tokens) {
  std::vector<CudaKvCache> caches;
  for (const auto& engine : engines_) {
    auto cache = CudaKvCache::Create(*engine, capacity_tokens);
    if (!cache.ok()) return cache.status();
    caches.push_back(std::move(*cache));
  }
  return caches;
}

absl::Status CudaTpEngine::RunOnRanks(const std::function<absl::Status(int rank)>& fn) {
  std::vector<absl::Status> results(engines_.size());
  std::vector<std::thread> threads;
  for (size_t r = 1; r < engines_.size(); ++r) {
    threads.emplace_back([&, r] { results[r] = fn(static_cast<int>(r)); });
  }
  results[0] = fn(0);
  for (std::thread& t : threads) t.join();
  for (const absl::Status& s : results) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status CudaTpEngine::Forward(std::span<CudaKvCache> caches, std::span<const int> tokens,
                                   int start_pos, std::span<float> logits) {
  if (caches.size() != engines_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("need one cache per rank (", engines_.size(), "), got ", caches.size()));
  }
  return RunOnRanks([&](int rank) {
    return engines_[rank]->Forward(caches[rank], tokens, start_pos,
                                   rank == 0 ? logits : std::span<float>());
  });
}

}  // namespace krul
