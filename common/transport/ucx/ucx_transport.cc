#include "krul/transport/ucx_transport.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <utility>

#include "absl/base/call_once.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "krul/base/byte_order.h"
#include "ucx_transport_internal.h"

namespace krul {

using transport_internal::Grant;
using transport_internal::WireKind;

absl::Status UcxTransportOptions::Validate() const {
  if (force_tcp && tcp_device.empty()) {
    return absl::InvalidArgumentError("UcxTransportOptions.tcp_device is empty with force_tcp");
  }
  if (max_op_bytes == 0) {
    return absl::InvalidArgumentError("UcxTransportOptions.max_op_bytes must be > 0");
  }
  for (const auto& [name, value] : ucx_settings) {
    if (name.empty() || absl::StartsWith(name, "UCX_")) {
      return absl::InvalidArgumentError(
          absl::StrCat("UcxTransportOptions.ucx_settings: name '", name,
                       "' must be a UCX setting without the UCX_ prefix"));
    }
  }
  return absl::OkStatus();
}

namespace ucx_internal {

absl::Status FromUcs(ucs_status_t status, std::string_view what) {
  if (status == UCS_OK) return absl::OkStatus();
  std::string message = absl::StrCat(std::string(what), ": ", ucs_status_string(status));
  switch (status) {
    case UCS_ERR_NO_MEMORY:
    case UCS_ERR_NO_RESOURCE:
    case UCS_ERR_EXCEEDS_LIMIT:
      return absl::ResourceExhaustedError(message);
    case UCS_ERR_INVALID_PARAM:
    case UCS_ERR_INVALID_ADDR:
      return absl::InvalidArgumentError(message);
    case UCS_ERR_UNSUPPORTED:
      return absl::UnimplementedError(message);
    default:
      // Connection resets, timeouts, unreachable peers, canceled requests,
      // I/O errors: the caller can retry on a fresh endpoint.
      return absl::UnavailableError(message);
  }
}

// ---------------------------------------------------------------- UcxCore

namespace {

// Endpoints use UCP_ERR_HANDLING_MODE_PEER (a dead kvstore must fail
// transfers, not hang them). UCX 1.13 leaves peer-failure handling off for
// its shared-memory transports, so they would be skipped in favour of TCP
// even between processes of one host; switch it on. These are memory-domain
// settings, which UCX 1.13 reads only from the environment
// (ucp_config_modify keeps unknown names for interfaces, which ignore them),
// so they go through setenv, never overwriting a value the user set.
void SetUcxEnvironmentDefaults() {
  static absl::once_flag once;
  absl::call_once(once, [] {
    setenv("UCX_POSIX_ERROR_HANDLING", "y", /*overwrite=*/0);
    setenv("UCX_SYSV_ERROR_HANDLING", "y", /*overwrite=*/0);
  });
}

}  // namespace

absl::StatusOr<std::shared_ptr<UcxCore>> UcxCore::Create(const UcxTransportOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  // Not needed without failure detection or when only TCP will be used (and
  // UCX would warn that they are unused).
  if (options.detect_peer_failure && (!options.force_tcp || std::getenv("UCX_TLS") != nullptr)) {
    SetUcxEnvironmentDefaults();
  }

  ucp_config_t* raw_config = nullptr;
  ucs_status_t st = ucp_config_read(nullptr, nullptr, &raw_config);
  if (st != UCS_OK) return FromUcs(st, "ucp_config_read");
  ConfigPtr config(raw_config);

  struct Setting {
    std::string name;  // as ucp_config_modify takes it
    std::string value;
    std::string env;  // the variable that, when set, wins over this
  };
  std::vector<Setting> settings;
  // UCX 1.13 over TCP moves large active messages (our messages protocol)
  // as fragments of UCX_TCP_TX_SEG_SIZE (8 KiB by default); 256 KiB cut the
  // CPU per byte by about a third in krul-bench-transport, for ~0.5 MiB of
  // buffers per connection. (ucp_config_modify hands interface settings to
  // every interface by field name, hence no TCP_ prefix.)
  const char* tls = std::getenv("UCX_TLS");
  if (tls == nullptr || absl::StrContains(tls, "tcp") || absl::StrContains(tls, "all")) {
    settings.push_back({"TX_SEG_SIZE", "256k", "UCX_TCP_TX_SEG_SIZE"});
    settings.push_back({"RX_SEG_SIZE", "256k", "UCX_TCP_RX_SEG_SIZE"});
  }
  if (options.force_tcp) {
    settings.push_back({"TLS", "tcp", "UCX_TLS"});
    settings.push_back({"NET_DEVICES", options.tcp_device, "UCX_NET_DEVICES"});
  }
  for (const auto& [name, value] : options.ucx_settings) {
    settings.push_back({name, value, absl::StrCat("UCX_", name)});
  }
  for (const Setting& setting : settings) {
    // The user's UCX_* environment always wins (as in NIXL): UCX's own
    // variables are the operator's escape hatch, so never override them.
    if (std::getenv(setting.env.c_str()) != nullptr) continue;
    st = ucp_config_modify(config.get(), setting.name.c_str(), setting.value.c_str());
    if (st != UCS_OK) {
      return absl::InvalidArgumentError(absl::StrCat("UCX rejected setting ", setting.name, "=",
                                                     setting.value, ": ", ucs_status_string(st)));
    }
  }

  std::shared_ptr<UcxCore> core(new UcxCore());
  core->max_op_bytes_ = options.max_op_bytes;
  core->protocol_ = options.protocol;
  core->detect_peer_failure_ = options.detect_peer_failure;
  std::random_device random;
  core->id_ = (static_cast<uint64_t>(random()) << 32) ^ random();

  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM;
  if (options.progress_thread) params.features |= UCP_FEATURE_WAKEUP;
  params.name = "krul";
  ucp_context_h context = nullptr;
  st = ucp_init(&params, config.get(), &context);
  if (st != UCS_OK) return FromUcs(st, "ucp_init");
  core->context_.reset(context);

  ucp_worker_params_t worker_params{};
  worker_params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  // Krul serializes every call on the worker with UcxCore::mu_.
  worker_params.thread_mode = UCS_THREAD_MODE_SERIALIZED;
  ucp_worker_h worker = nullptr;
  st = ucp_worker_create(context, &worker_params, &worker);
  if (st != UCS_OK) return FromUcs(st, "ucp_worker_create");
  core->worker_.reset(worker);

  if (absl::Status s = RegisterMessageHandlers(*core); !s.ok()) return s;

  if (options.progress_thread) {
    st = ucp_worker_get_efd(worker, &core->event_fd_);
    if (st != UCS_OK) return FromUcs(st, "ucp_worker_get_efd");
  }

  ucp_address_t* worker_address = nullptr;
  size_t worker_address_len = 0;
  st = ucp_worker_get_address(worker, &worker_address, &worker_address_len);
  if (st != UCS_OK) return FromUcs(st, "ucp_worker_get_address");
  std::string payload;
  ::krul::internal::Append64(payload, core->id_);
  payload.append(reinterpret_cast<const char*>(worker_address), worker_address_len);
  ucp_worker_release_address(worker, worker_address);
  core->address_ = transport_internal::EncodeAddress(WireKind::kUcx, payload);
  return core;
}

UcxCore::~UcxCore() { StopProgressThread(); }

TamperHook UcxCore::hook() const {
  absl::MutexLock lock(&hook_mu_);
  return hook_;
}

void UcxCore::set_hook(TamperHook hook) {
  absl::MutexLock lock(&hook_mu_);
  hook_ = std::move(hook);
}

uint64_t UcxCore::AddServedRegion(uint8_t* data, size_t size) {
  const uint64_t id = next_region_id_++;
  served_[id] = ServedRegion{data, size, 0, false};
  return id;
}

void UcxCore::RemoveServedRegion(uint64_t region_id) {
  auto it = served_.find(region_id);
  if (it == served_.end()) return;
  it->second.revoked = true;
  // Replies still being sent from the region, or payloads still landing in
  // it, must finish before the memory goes. A dead client fails them (peer
  // failure detection), so this ends; the deadline guards against a UCX
  // that never reports.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (served_[region_id].in_flight > 0 && absl::Now() < deadline) ProgressLocked();
  served_.erase(region_id);
  absl::erase_if(grants_, [region_id](const auto& g) { return g.second.region_id == region_id; });
}

uint64_t UcxCore::AddServedGrant(uint64_t region_id, uint64_t begin, uint64_t length,
                                 absl::Time expires) {
  // Expired grants are refused anyway; drop them whenever the table has
  // doubled since the last sweep, so it stays proportional to live grants.
  if (grants_.size() >= 2 * grants_after_sweep_ + 64) {
    const absl::Time now = absl::Now();
    absl::erase_if(grants_, [now](const auto& g) { return g.second.expires <= now; });
    grants_after_sweep_ = grants_.size();
  }
  // The id is the capability a messages-protocol request presents: random,
  // so a client cannot name a grant it was not given.
  static thread_local std::random_device random;
  uint64_t id = 0;
  do {
    id = (static_cast<uint64_t>(random()) << 32) ^ random();
  } while (id == 0 || grants_.contains(id));
  grants_[id] = ServedGrant{region_id, begin, length, expires};
  return id;
}

void UcxCore::RevokeServedGrant(uint64_t grant_id) { grants_.erase(grant_id); }

absl::StatusCode UcxCore::CheckServed(uint64_t region_id, uint64_t grant_id, uint64_t address,
                                      uint64_t length, uint8_t** target) {
  auto g = grants_.find(grant_id);
  if (g == grants_.end() || g->second.region_id != region_id) return absl::StatusCode::kAborted;
  auto it = served_.find(region_id);
  if (it == served_.end() || it->second.revoked) return absl::StatusCode::kAborted;
  if (g->second.expires <= absl::Now()) return absl::StatusCode::kPermissionDenied;
  const uint64_t begin = g->second.begin;
  if (length == 0 || address < begin || address - begin > g->second.length ||
      length > g->second.length - (address - begin)) {
    return absl::StatusCode::kOutOfRange;
  }
  // Describe only grants ranges inside the region; check anyway.
  const auto region_begin = reinterpret_cast<uint64_t>(it->second.data);
  if (address < region_begin || address - region_begin > it->second.size ||
      length > it->second.size - (address - region_begin)) {
    return absl::StatusCode::kOutOfRange;
  }
  *target = it->second.data + (address - region_begin);
  return absl::StatusCode::kOk;
}

void UcxCore::ServedOpStarted(uint64_t region_id) { ++served_[region_id].in_flight; }

void UcxCore::ServedOpDone(uint64_t region_id) {
  auto it = served_.find(region_id);
  if (it != served_.end()) --it->second.in_flight;
}

uint64_t UcxCore::AddPending(const PendingRequest& request) {
  const uint64_t id = next_request_id_++;
  pending_[id] = request;
  return id;
}

std::optional<PendingRequest> UcxCore::TakePending(uint64_t request_id) {
  auto it = pending_.find(request_id);
  if (it == pending_.end()) return std::nullopt;
  PendingRequest request = it->second;
  pending_.erase(it);
  return request;
}

void UcxCore::FailPending(const UcxEpState* ep, const absl::Status& status) {
  std::vector<OpSink*> failed;
  for (auto it = pending_.begin(); it != pending_.end();) {
    if (it->second.ep == ep) {
      failed.push_back(it->second.sink);
      pending_.erase(it++);
    } else {
      ++it;
    }
  }
  for (OpSink* sink : failed) sink->OnOpComplete(status);
}

void UcxCore::WaitForEvents(absl::Duration timeout) {
  if (event_fd_ < 0) {
    // No wakeup support requested: nothing to sleep on but time itself.
    absl::SleepFor(std::min(timeout, absl::Microseconds(50)));
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    // UCS_ERR_BUSY: events are already pending, progress right away.
    if (ucp_worker_arm(worker_.get()) != UCS_OK) return;
  }
  pollfd fd{event_fd_, POLLIN, 0};
  const int64_t ms = std::max<int64_t>(1, absl::ToInt64Milliseconds(timeout));
  poll(&fd, 1, static_cast<int>(std::min<int64_t>(ms, 1000)));
}

void UcxCore::StartProgressThread() {
  if (event_fd_ < 0 || progress_thread_.joinable()) return;
  stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  stop_ = false;
  progress_thread_ = std::thread([this] { ProgressLoop(); });
}

void UcxCore::StopProgressThread() {
  if (!progress_thread_.joinable()) return;
  stop_ = true;
  if (stop_fd_ >= 0) {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = write(stop_fd_, &one, sizeof(one));
  }
  progress_thread_.join();
  if (stop_fd_ >= 0) close(stop_fd_);
  stop_fd_ = -1;
}

void UcxCore::ProgressLoop() {
  while (!stop_.load()) {
    if (waiters_.load() > 0) {
      pollfd stop{stop_fd_, POLLIN, 0};
      poll(&stop, 1, 1);
      continue;
    }
    ucs_status_t armed;
    {
      absl::MutexLock lock(&mu_);
      while (ProgressLocked()) {
      }
      armed = ucp_worker_arm(worker_.get());
    }
    if (armed == UCS_ERR_BUSY) continue;
    pollfd fds[2] = {{event_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    // The timeout only bounds how long a missed wakeup could stall us; a
    // transport without event support (arm failing) is polled every 1 ms.
    poll(fds, stop_fd_ >= 0 ? 2 : 1, armed == UCS_OK ? 100 : 1);
  }
}

// ------------------------------------------------------------- UcxEpState

absl::Status UcxEpState::Open(std::string_view worker_address) {
  ucp_ep_params_t params{};
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER;
  params.address = reinterpret_cast<const ucp_address_t*>(worker_address.data());
  // PEER mode: a dead peer fails our requests instead of hanging them (see
  // UcxTransportOptions::detect_peer_failure).
  params.err_mode =
      core_->detect_peer_failure() ? UCP_ERR_HANDLING_MODE_PEER : UCP_ERR_HANDLING_MODE_NONE;
  params.err_handler.cb = &UcxEpState::OnError;
  params.err_handler.arg = this;
  absl::MutexLock lock(&core_->mu());
  ucs_status_t st = ucp_ep_create(core_->worker(), &params, &ep_);
  if (st != UCS_OK) {
    ep_ = nullptr;
    return absl::UnavailableError(
        absl::StrCat("ucp_ep_create: cannot reach the peer: ", ucs_status_string(st)));
  }
  return absl::OkStatus();
}

void UcxEpState::OnError(void* arg, ucp_ep_h /*ep*/, ucs_status_t status) {
  auto* self = static_cast<UcxEpState*>(arg);
  int expected = UCS_OK;
  self->error_.compare_exchange_strong(expected, status);
  // Requests on this endpoint will get no reply: fail them now. UCX calls
  // this from progress, so mu is held.
  self->core_->mu().AssertHeld();
  self->core_->FailPending(self, self->status());
}

absl::Status UcxEpState::status() const {
  const auto error = static_cast<ucs_status_t>(error_.load());
  if (error == UCS_OK) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat("UCX endpoint failed: ", ucs_status_string(error)));
}

absl::StatusOr<std::shared_ptr<UcxRemoteKey>> UcxEpState::ImportKey(uint64_t region_id,
                                                                    std::string_view packed,
                                                                    bool* unpacked) {
  *unpacked = false;
  std::string cache_key;
  ::krul::internal::Append64(cache_key, region_id);
  cache_key.append(packed);
  KeyList evicted;  // Released after keys_mu_: ~UcxRemoteKey takes core mu.
  absl::MutexLock lock(&keys_mu_);
  if (auto it = key_index_.find(cache_key); it != key_index_.end()) {
    keys_.splice(keys_.begin(), keys_, it->second);
    return it->second->second;
  }
  ucp_rkey_h rkey = nullptr;
  {
    absl::MutexLock core_lock(&core_->mu());
    ucs_status_t st = ucp_ep_rkey_unpack(ep_, packed.data(), &rkey);
    if (st != UCS_OK) return FromUcs(st, "ucp_ep_rkey_unpack");
  }
  *unpacked = true;
  auto key = std::make_shared<UcxRemoteKey>(core_, rkey);
  keys_.emplace_front(cache_key, key);
  key_index_[std::move(cache_key)] = keys_.begin();
  while (keys_.size() > kRemoteKeyCacheCapacity) {
    key_index_.erase(keys_.back().first);
    evicted.splice(evicted.begin(), keys_, std::prev(keys_.end()));
  }
  return key;
}

UcxRemoteKey::~UcxRemoteKey() {
  absl::MutexLock lock(&core_->mu());
  ucp_rkey_destroy(rkey_);
}

UcxEpState::~UcxEpState() {
  {
    // Remote keys go before the endpoint they were unpacked on. Nothing else
    // holds them now: every grant holds this state.
    KeyList keys;
    absl::MutexLock lock(&keys_mu_);
    key_index_.clear();
    keys.swap(keys_);
  }
  if (ep_ == nullptr) return;
  absl::MutexLock lock(&core_->mu());
  ucp_request_param_t param{};
  // Every transfer on this endpoint has completed (transfers keep their
  // remote region, and so this state, alive), so a flush close has only the
  // wire-up to finish; a failed endpoint is closed by force.
  // (Force needs PEER mode on both sides.)
  if (error_.load() != UCS_OK && core_->detect_peer_failure()) {
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = UCP_EP_CLOSE_FLAG_FORCE;
  }
  ucs_status_ptr_t request = ucp_ep_close_nbx(ep_, &param);
  if (UCS_PTR_IS_PTR(request)) {
    const absl::Time deadline = absl::Now() + absl::Seconds(2);
    while (ucp_request_check_status(request) == UCS_INPROGRESS && absl::Now() < deadline) {
      core_->ProgressLocked();
    }
    ucp_request_free(request);
  }
}

// --------------------------------------------------------------- UcxRegion

UcxRegion::UcxRegion(std::shared_ptr<UcxCore> core, ucp_mem_h memh, uint8_t* data, size_t size,
                     void* rkey_buffer, size_t rkey_size, uint64_t served_id)
    : core_(std::move(core)),
      memh_(memh),
      data_(data),
      size_(size),
      rkey_buffer_(rkey_buffer),
      rkey_size_(rkey_size),
      served_id_(served_id) {}

UcxRegion::~UcxRegion() {
  absl::MutexLock lock(&core_->mu());
  core_->RemoveServedRegion(served_id_);
  ucp_rkey_buffer_release(rkey_buffer_);
  // Also frees the memory of an AllocateRegion region.
  ucp_mem_unmap(core_->context(), memh_);
}

absl::StatusOr<std::string> UcxRegion::Describe(uint64_t offset, uint64_t length_bytes,
                                                absl::Time expires) const {
  if (absl::Status s = transport_internal::CheckDescribeRange(offset, length_bytes, size_);
      !s.ok()) {
    return s;
  }
  Grant grant;
  grant.base_address = reinterpret_cast<uint64_t>(data_) + offset;
  grant.length = length_bytes;
  grant.expires = expires;
  grant.owner_id = core_->id();
  grant.region_id = served_id_;
  {
    absl::MutexLock lock(&core_->mu());
    grant.grant_id =
        core_->AddServedGrant(served_id_, grant.base_address, grant.length, grant.expires);
  }
  grant.rkey.assign(static_cast<const char*>(rkey_buffer_), rkey_size_);
  return transport_internal::EncodeGrant(WireKind::kUcx, grant);
}

void UcxRegion::Revoke(std::string_view descriptor) const {
  absl::StatusOr<Grant> grant = transport_internal::DecodeGrant(WireKind::kUcx, descriptor);
  if (!grant.ok() || grant->owner_id != core_->id()) return;
  absl::MutexLock lock(&core_->mu());
  core_->RevokeServedGrant(grant->grant_id);
}

namespace {

class UcxEndpoint final : public Endpoint {
 public:
  explicit UcxEndpoint(std::shared_ptr<UcxEpState> state) : state_(std::move(state)) {}

  absl::StatusOr<std::unique_ptr<RemoteRegion>> ImportRegion(std::string_view descriptor) override {
    absl::StatusOr<Grant> grant = transport_internal::DecodeGrant(WireKind::kUcx, descriptor);
    if (!grant.ok()) return grant.status();
    if (grant->owner_id != state_->peer_id()) {
      return absl::InvalidArgumentError(
          "descriptor was issued by another UCX transport than this endpoint's peer");
    }
    if (grant->rkey.empty()) return absl::InvalidArgumentError("descriptor has no remote key");
    if (absl::Status s = transport_internal::CheckNotExpired(grant->expires); !s.ok()) return s;
    if (absl::Status s = state_->status(); !s.ok()) return s;
    // The region's key is unpacked (and, same host, its memory mapped) once
    // per endpoint; this grant only narrows it to [base, base + length)
    // until expiry, which every transfer checks.
    bool unpacked = false;
    absl::StatusOr<std::shared_ptr<UcxRemoteKey>> key =
        state_->ImportKey(grant->region_id, grant->rkey, &unpacked);
    if (!key.ok()) return key.status();
    void* mapped = nullptr;
    {
      absl::MutexLock lock(&state_->core().mu());
      // Same host and UCX-allocated memory: the peer's region is mapped here
      // and transfers can copy directly. Check both ends of the grant.
      void* last = nullptr;
      if (ucp_rkey_ptr((*key)->get(), grant->base_address, &mapped) != UCS_OK ||
          ucp_rkey_ptr((*key)->get(), grant->base_address + grant->length - 1, &last) != UCS_OK ||
          static_cast<uint8_t*>(last) != static_cast<uint8_t*>(mapped) + grant->length - 1) {
        mapped = nullptr;
      }
    }
    state_->core().CountImport(unpacked);
    return std::unique_ptr<RemoteRegion>(new UcxRemoteRegion(
        state_, *std::move(key), static_cast<uint8_t*>(mapped), *std::move(grant)));
  }

  absl::Status status() const override { return state_->status(); }

  std::string DebugString() const override {
    char* buffer = nullptr;
    size_t size = 0;
    FILE* stream = open_memstream(&buffer, &size);
    if (stream == nullptr) return "ucx endpoint (no info)";
    {
      absl::MutexLock lock(&state_->core().mu());
      ucp_ep_print_info(state_->ep(), stream);
    }
    std::fclose(stream);
    std::string info(buffer, size);
    std::free(buffer);
    return info;
  }

 private:
  std::shared_ptr<UcxEpState> state_;
};

class UcxTransport final : public Transport {
 public:
  explicit UcxTransport(std::shared_ptr<UcxCore> core) : core_(std::move(core)) {
    core_->StartProgressThread();
  }
  // Handles may outlive this object; they keep the core, but background
  // progress stops here.
  ~UcxTransport() override { core_->StopProgressThread(); }

  std::string_view name() const override { return "ucx"; }
  const std::string& address() const override { return core_->address(); }

  absl::StatusOr<std::unique_ptr<MemoryRegion>> AllocateRegion(size_t length_bytes) override {
    if (length_bytes == 0) return absl::InvalidArgumentError("AllocateRegion of 0 bytes");
    ucp_mem_map_params_t params{};
    params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                        UCP_MEM_MAP_PARAM_FIELD_FLAGS;
    params.address = nullptr;
    params.length = length_bytes;
    // UCX allocates with the first method of UCX_MEM_ALLOC_METHODS that
    // works; by default shared memory that same-host peers map directly.
    params.flags = UCP_MEM_MAP_ALLOCATE;
    absl::StatusOr<std::unique_ptr<MemoryRegion>> region = Map(params);
    if (region.ok()) std::memset((*region)->data(), 0, length_bytes);
    return region;
  }

  absl::StatusOr<std::unique_ptr<MemoryRegion>> RegisterRegion(void* data, size_t length_bytes,
                                                               MemoryKind kind) override {
    if (data == nullptr || length_bytes == 0) {
      return absl::InvalidArgumentError("RegisterRegion of null or empty memory");
    }
    if (kind != MemoryKind::kHost) {
      return absl::UnimplementedError("UCX transport: only host memory is supported so far");
    }
    ucp_mem_map_params_t params{};
    params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
    params.address = data;
    params.length = length_bytes;
    return Map(params);
  }

  absl::StatusOr<std::unique_ptr<Endpoint>> Connect(std::string_view peer_address) override {
    absl::StatusOr<std::string> payload =
        transport_internal::DecodeAddress(WireKind::kUcx, peer_address);
    if (!payload.ok()) return payload.status();
    if (payload->size() <= 8) return absl::InvalidArgumentError("UCX address: payload too short");
    const uint64_t peer_id = ::krul::internal::Get64(payload->data());
    auto state = std::make_shared<UcxEpState>(core_, peer_id);
    if (absl::Status s = state->Open(std::string_view(*payload).substr(8)); !s.ok()) return s;
    return std::unique_ptr<Endpoint>(new UcxEndpoint(std::move(state)));
  }

  absl::StatusOr<std::unique_ptr<Transfer>> PrepareTransfer(
      TransferOp op, MemoryRegion& local, RemoteRegion& remote,
      std::span<const TransferSegment> segments) override {
    auto* ucx_local = dynamic_cast<UcxRegion*>(&local);
    auto* ucx_remote = dynamic_cast<UcxRemoteRegion*>(&remote);
    if (ucx_local == nullptr || ucx_local->core() != core_.get()) {
      return absl::InvalidArgumentError("local region does not belong to this transport");
    }
    if (ucx_remote == nullptr || &ucx_remote->ep()->core() != core_.get()) {
      return absl::InvalidArgumentError("remote region was not imported by this transport");
    }
    if (absl::Status s = transport_internal::ValidateTransfer(segments, local, remote); !s.ok()) {
      return s;
    }
    if (absl::Status s = ucx_remote->ep()->status(); !s.ok()) return s;
    return NewUcxTransfer(op, *ucx_local, *ucx_remote, segments);
  }

  void SetTamperHookForTesting(TamperHook hook) override { core_->set_hook(std::move(hook)); }

  TransportStats stats() const override { return core_->stats(); }

 private:
  absl::StatusOr<std::unique_ptr<MemoryRegion>> Map(const ucp_mem_map_params_t& params) {
    absl::MutexLock lock(&core_->mu());
    ucp_mem_h memh = nullptr;
    ucs_status_t st = ucp_mem_map(core_->context(), &params, &memh);
    if (st != UCS_OK) {
      absl::Status status = FromUcs(st, "ucp_mem_map");
      return absl::ResourceExhaustedError(status.message());
    }
    ucp_mem_attr_t attr{};
    attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
    st = ucp_mem_query(memh, &attr);
    void* rkey_buffer = nullptr;
    size_t rkey_size = 0;
    if (st == UCS_OK) st = ucp_rkey_pack(core_->context(), memh, &rkey_buffer, &rkey_size);
    if (st != UCS_OK) {
      ucp_mem_unmap(core_->context(), memh);
      return absl::ResourceExhaustedError(FromUcs(st, "ucp_rkey_pack").message());
    }
    // For a registration UCX reports the (page-aligned) mapped span; the
    // region is exactly what the caller asked for.
    uint8_t* data = params.address != nullptr ? static_cast<uint8_t*>(params.address)
                                              : static_cast<uint8_t*>(attr.address);
    const uint64_t served_id = core_->AddServedRegion(data, params.length);
    return std::unique_ptr<MemoryRegion>(
        new UcxRegion(core_, memh, data, params.length, rkey_buffer, rkey_size, served_id));
  }

  std::shared_ptr<UcxCore> core_;
};

}  // namespace
}  // namespace ucx_internal

absl::StatusOr<std::unique_ptr<Transport>> NewUcxTransport(const UcxTransportOptions& options) {
  absl::StatusOr<std::shared_ptr<ucx_internal::UcxCore>> core =
      ucx_internal::UcxCore::Create(options);
  if (!core.ok()) return core.status();
  return std::unique_ptr<Transport>(new ucx_internal::UcxTransport(*std::move(core)));
}

}  // namespace krul
