#include "kvstore/storage/store.h"

#include <cstring>
#include <functional>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "krul/base/log.h"
#include "krul/base/status_macros.h"
#include "krul/kvformat/kv_block.h"
#include "krul/kvformat/manifest.h"
#include "kvstore/metrics.h"

namespace krul::kvstore {

// An open put: staging buffers for every block, and how much of each the
// gRPC data plane has written.
struct Store::Reservation {
  uint64_t id = 0;
  VersionKey key;
  std::vector<uint64_t> sizes;
  uint64_t total = 0;
  absl::Duration ttl;
  absl::Time deadline;

  absl::Mutex mu;
  std::vector<std::shared_ptr<ByteBuffer>> buffers ABSL_GUARDED_BY(mu);
  std::vector<uint64_t> written ABSL_GUARDED_BY(mu);
  // A zero-copy data plane writes without telling us; then only the
  // checksums at commit vouch for the bytes.
  bool external_writes ABSL_GUARDED_BY(mu) = false;
  bool closed ABSL_GUARDED_BY(mu) = false;
};

namespace {

uint64_t RandomSeed() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

std::string KeyString(const v1::ConversationKey& key) {
  return VersionKey::FromProto(key).DebugString();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const StoreOptions& options, Clock* clock,
                                                   KvStoreMetrics* metrics,
                                                   BufferAllocator* allocator) {
  KRUL_RETURN_IF_ERROR(options.Validate());
  std::unique_ptr<RocksDbTier> rocks;
  RecoveryReport recovery;
  if (options.tiers != TierMode::kDramOnly) {
    RocksDbTierOptions ro;
    ro.path = options.rocksdb_path;
    ro.sync = options.rocksdb_sync;
    ro.min_blob_bytes = options.rocksdb_min_blob_bytes;
    ro.write_buffer_bytes = options.rocksdb_write_buffer_bytes;
    absl::StatusOr<std::unique_ptr<RocksDbTier>> opened =
        OpenRocksDbTier(ro, options.rocksdb_recover, metrics, &recovery);
    if (!opened.ok()) return opened.status();
    rocks = *std::move(opened);
  }
  std::unique_ptr<Store> store(new Store(options, clock, metrics, std::move(rocks), RandomSeed()));
  store->allocator_ = allocator;
  store->recovery_ = std::move(recovery);
  if (store->rocks_ != nullptr) {
    KRUL_RETURN_IF_ERROR(store->ReloadIndex());
  }
  if (options.write_mode == WriteMode::kWriteBack) {
    store->flusher_ = std::thread([s = store.get()] { s->FlusherLoop(); });
  }
  return store;
}

Store::Store(const StoreOptions& options, Clock* clock, KvStoreMetrics* metrics,
             std::unique_ptr<RocksDbTier> rocks, uint64_t id_seed)
    : options_(options),
      clock_(clock),
      metrics_(metrics),
      rocks_(std::move(rocks)),
      quota_(options.default_tenant_quota_bytes, options.tenant_quota_bytes),
      leases_(id_seed ^ 0x5DEECE66Dull),
      next_put_id_((id_seed >> 1) | 1) {
  if (options.tiers != TierMode::kRocksDbOnly) {
    dram_ = std::make_unique<DramTier>(options.dram_capacity_bytes, options.high_watermark,
                                       options.low_watermark);
  }
}

Store::~Store() {
  if (flusher_.joinable()) {
    {
      absl::MutexLock lock(&mu_);
      stop_flusher_ = true;
    }
    flusher_.join();  // Drains the flush queue first.
  }
  if (rocks_ != nullptr) {
    if (absl::Status s = Flush(); !s.ok()) KRUL_LOG(ERROR) << "kvstore: flush at close: " << s;
  }
}

std::unique_ptr<ByteBuffer> Store::AllocateBuffer(size_t size) {
  if (allocator_ != nullptr) {
    if (std::unique_ptr<ByteBuffer> b = allocator_->Allocate(size)) return b;
  }
  return ByteBuffer::Allocate(size);
}

absl::Status Store::ReloadIndex() {
  absl::MutexLock lock(&mu_);
  absl::Time now = clock_->Now();
  uint64_t corrupt = 0;
  absl::Status scan = rocks_->ForEachManifest(
      [&](const VersionKey& key, absl::StatusOr<v1::Manifest> manifest)
          ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
            Entry e;
            e.on_disk = true;
            e.last_access = now;  // Idle time before a restart is not known.
            e.generation = next_generation_++;
            if (!manifest.ok()) {
              e.corrupt = manifest.status();
            } else if (VersionKey::FromProto(manifest->key()) != key) {
              e.corrupt = absl::DataLossError(
                  absl::StrCat("stored manifest of ", key.DebugString(), " names another key"));
            } else if (absl::Status v = ValidateManifest(*manifest); !v.ok()) {
              e.corrupt = absl::DataLossError(
                  absl::StrCat("stored manifest of ", key.DebugString(), ": ", v.message()));
            } else {
              e.bytes = ManifestBlockBytes(*manifest);
              e.ttl = absl::Seconds(manifest->ttl_seconds());
              e.manifest = std::make_shared<const v1::Manifest>(*std::move(manifest));
            }
            if (!e.corrupt.ok()) ++corrupt;
            quota_.AddStored(key.tenant, e.bytes);
            disk_bytes_ += e.bytes;
            ++disk_objects_;
            index_[key] = std::move(e);
          });
  if (corrupt > 0) {
    KRUL_LOG(WARNING) << "kvstore: " << corrupt
                      << " stored manifests failed verification; reads of those versions return "
                         "DATA_LOSS";
    checksum_failures_ += corrupt;
    if (metrics_ != nullptr) {
      for (uint64_t i = 0; i < corrupt; ++i) metrics_->ChecksumFailure();
    }
  }
  UpdateGaugesLocked();
  return scan;
}

absl::Status Store::CheckTenant(const std::string& tenant) const {
  if (options_.allow_unknown_tenants || options_.tenant_quota_bytes.contains(tenant)) {
    return absl::OkStatus();
  }
  return absl::PermissionDeniedError(absl::StrCat("unknown tenant '", tenant, "'"));
}

absl::Mutex& Store::KeyMutex(const VersionKey& key) {
  size_t h = std::hash<std::string>()(key.tenant) * 31 +
             std::hash<std::string>()(key.conversation_id) * 17 + key.turn;
  return key_mu_[h % kKeyStripes];
}

std::map<VersionKey, Store::Entry>::iterator Store::FindLocked(const VersionKey& key, bool latest) {
  if (!latest) return index_.find(key);
  auto it = index_.upper_bound(VersionKey{key.tenant, key.conversation_id, 0xFFFFFFFFu});
  if (it == index_.begin()) return index_.end();
  --it;
  if (it->first.tenant != key.tenant || it->first.conversation_id != key.conversation_id) {
    return index_.end();
  }
  return it;
}

// ---- writes ----------------------------------------------------------------

absl::StatusOr<PutReservation> Store::BeginPut(const v1::ConversationKey& key,
                                               std::span<const uint64_t> block_sizes,
                                               absl::Duration ttl) {
  KRUL_RETURN_IF_ERROR(ValidateConversationKey(key));
  KRUL_RETURN_IF_ERROR(CheckTenant(key.tenant()));
  if (block_sizes.size() > options_.max_blocks_per_version) {
    return absl::InvalidArgumentError(absl::StrCat("block_sizes: ", block_sizes.size(),
                                                   " blocks exceed the limit of ",
                                                   options_.max_blocks_per_version));
  }
  uint64_t total = 0;
  for (size_t i = 0; i < block_sizes.size(); ++i) {
    if (block_sizes[i] < kBlockHeaderBytes || block_sizes[i] > options_.max_block_bytes) {
      return absl::InvalidArgumentError(absl::StrCat("block_sizes[", i, "]: ", block_sizes[i],
                                                     " bytes is not in [", kBlockHeaderBytes, ", ",
                                                     options_.max_block_bytes, "]"));
    }
    total += block_sizes[i];
  }
  if (ttl < absl::ZeroDuration() || ttl > options_.max_ttl) {
    return absl::InvalidArgumentError(absl::StrCat("ttl: ", absl::FormatDuration(ttl),
                                                   " is not in [0, ",
                                                   absl::FormatDuration(options_.max_ttl), "]"));
  }
  if (ttl == absl::ZeroDuration()) ttl = options_.default_ttl;

  auto r = std::make_shared<Reservation>();
  r->key = VersionKey::FromProto(key);
  r->sizes.assign(block_sizes.begin(), block_sizes.end());
  r->total = total;
  r->ttl = ttl;
  {
    absl::MutexLock lock(&mu_);
    if (draining_) return absl::UnavailableError("kvstore is shutting down; put elsewhere");
    if (options_.tiers == TierMode::kDramOnly && !dram_->CanEverHold(total)) {
      return absl::ResourceExhaustedError(
          absl::StrCat("version of ", total, " bytes does not fit the DRAM-only store (",
                       dram_->high_bytes() - std::min(dram_->high_bytes(), dram_->pinned_bytes()),
                       " bytes below the high watermark are unpinned)"));
    }
    if (total > options_.max_staging_bytes - std::min(options_.max_staging_bytes, staging_bytes_)) {
      return absl::ResourceExhaustedError(
          absl::StrCat("staging memory full: ", staging_bytes_, " bytes reserved by open puts + ",
                       total, " requested > ", options_.max_staging_bytes));
    }
    if (absl::Status q = quota_.Reserve(r->key.tenant, total); !q.ok()) {
      if (metrics_ != nullptr) metrics_->QuotaRejection(r->key.tenant);
      return q;
    }
    staging_bytes_ += total;
    r->id = next_put_id_++;
    if (next_put_id_ == 0) next_put_id_ = 1;
  }
  // Allocate outside the lock (a 64 MiB allocation should not stall
  // readers). Up to kWholeVersionBytes the version is one allocation and
  // its blocks are slices of it, so they lie next to each other and a data
  // plane can grant them all at once; bigger versions get one allocation
  // per block so that an arena can still place them in its shared chunks.
  constexpr uint64_t kWholeVersionBytes = uint64_t{64} << 20;
  std::vector<std::shared_ptr<ByteBuffer>> buffers;
  buffers.reserve(block_sizes.size());
  std::shared_ptr<ByteBuffer> whole;
  if (total <= kWholeVersionBytes) whole = AllocateBuffer(total);
  uint64_t offset = 0;
  for (uint64_t size : block_sizes) {
    std::shared_ptr<ByteBuffer> b =
        whole != nullptr ? ByteBuffer::Slice(whole, offset, size) : AllocateBuffer(size);
    if (b == nullptr) {
      absl::MutexLock lock(&mu_);
      DropReservationLocked(*r);
      return absl::ResourceExhaustedError(absl::StrCat("out of memory staging ", total, " bytes"));
    }
    buffers.push_back(std::move(b));
    offset += size;
  }
  PutReservation out;
  out.put_id = r->id;
  out.block_sizes = r->sizes;
  {
    absl::MutexLock rl(&r->mu);
    r->buffers = std::move(buffers);
    r->written.assign(block_sizes.size(), 0);
  }
  absl::MutexLock lock(&mu_);
  r->deadline = clock_->Now() + options_.put_timeout;
  out.deadline = r->deadline;
  reservations_[r->id] = std::move(r);
  return out;
}

void Store::DropReservationLocked(const Reservation& r) {
  staging_bytes_ -= std::min(staging_bytes_, r.total);
  quota_.Unreserve(r.key.tenant, r.total);
}

absl::StatusOr<std::shared_ptr<Store::Reservation>> Store::OpenReservation(uint64_t put_id) {
  absl::MutexLock lock(&mu_);
  auto it = reservations_.find(put_id);
  if (it == reservations_.end()) {
    return absl::NotFoundError(absl::StrCat("put ", put_id, " is not open"));
  }
  return it->second;
}

absl::Status Store::CheckOpenBlockLocked(const Reservation& r, uint32_t index) {
  if (r.closed) return absl::NotFoundError(absl::StrCat("put ", r.id, " is not open"));
  if (index >= r.sizes.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("index: block ", index, " of a put with ", r.sizes.size(), " blocks"));
  }
  return absl::OkStatus();
}

absl::Status Store::WriteChunk(uint64_t put_id, uint32_t index, uint64_t offset,
                               absl::string_view data) {
  auto open = OpenReservation(put_id);
  if (!open.ok()) return open.status();
  Reservation* r = open->get();
  absl::MutexLock rl(&r->mu);
  KRUL_RETURN_IF_ERROR(CheckOpenBlockLocked(*r, index));
  if (offset != r->written[index]) {
    return absl::InvalidArgumentError(absl::StrCat("offset: ", offset, " but block ", index,
                                                   " has ", r->written[index],
                                                   " bytes so far (chunks go in order)"));
  }
  if (data.size() > r->sizes[index] - offset) {
    return absl::InvalidArgumentError(absl::StrCat("data: ", data.size(), " bytes at offset ",
                                                   offset, " overrun block ", index, " of ",
                                                   r->sizes[index], " bytes"));
  }
  if (!data.empty()) std::memcpy(r->buffers[index]->data() + offset, data.data(), data.size());
  r->written[index] += data.size();
  return absl::OkStatus();
}

absl::StatusOr<StagingBlock> Store::GetStagingBlock(uint64_t put_id, uint32_t index) {
  auto open = OpenReservation(put_id);
  if (!open.ok()) return open.status();
  Reservation* r = open->get();
  absl::MutexLock rl(&r->mu);
  KRUL_RETURN_IF_ERROR(CheckOpenBlockLocked(*r, index));
  r->external_writes = true;
  StagingBlock out;
  out.data = r->buffers[index]->data();
  out.size = r->sizes[index];
  out.region = r->buffers[index]->region();
  out.region_offset = r->buffers[index]->region_offset();
  out.keepalive = r->buffers[index];
  return out;
}

absl::StatusOr<v1::Manifest> Store::CommitPut(uint64_t put_id, v1::Manifest manifest) {
  std::shared_ptr<Reservation> r;
  {
    absl::MutexLock lock(&mu_);
    auto it = reservations_.find(put_id);
    if (it == reservations_.end()) {
      return absl::NotFoundError(absl::StrCat(
          "put ", put_id, " is not open (never begun, already committed, aborted or expired)"));
    }
    r = std::move(it->second);
    reservations_.erase(it);
    staging_bytes_ -= std::min(staging_bytes_, r->total);
  }
  auto fail = [&](absl::Status s) {
    absl::MutexLock lock(&mu_);
    quota_.Unreserve(r->key.tenant, r->total);
    return s;
  };
  std::vector<std::shared_ptr<ByteBuffer>> buffers;
  {
    absl::MutexLock rl(&r->mu);
    r->closed = true;
    if (!r->external_writes) {
      for (size_t i = 0; i < r->sizes.size(); ++i) {
        if (r->written[i] != r->sizes[i]) {
          return fail(absl::FailedPreconditionError(
              absl::StrCat("block ", i, ": ", r->written[i], " of ", r->sizes[i],
                           " bytes written; the put is aborted")));
        }
      }
    }
    buffers = std::move(r->buffers);
  }
  if (absl::Status s = ValidateManifest(manifest); !s.ok()) return fail(s);
  if (VersionKey::FromProto(manifest.key()) != r->key) {
    return fail(absl::InvalidArgumentError(absl::StrCat("manifest.key: ", KeyString(manifest.key()),
                                                        " but put ", put_id, " is for ",
                                                        r->key.DebugString())));
  }
  if (static_cast<size_t>(manifest.blocks_size()) != r->sizes.size()) {
    return fail(absl::InvalidArgumentError(absl::StrCat("manifest.blocks: ", manifest.blocks_size(),
                                                        " blocks, reserved ", r->sizes.size())));
  }
  std::vector<BufferPtr> blocks;
  blocks.reserve(buffers.size());
  for (size_t i = 0; i < buffers.size(); ++i) {
    const v1::BlockRef& ref = manifest.blocks(static_cast<int>(i));
    if (ref.encoded_bytes() != r->sizes[i]) {
      return fail(absl::InvalidArgumentError(absl::StrCat("manifest.blocks[", i,
                                                          "].encoded_bytes: ", ref.encoded_bytes(),
                                                          ", reserved ", r->sizes[i])));
    }
    absl::StatusOr<DecodedBlock> verified = VerifyBlock(ref, buffers[i]->view());
    if (!verified.ok()) {
      CountChecksumFailure();
      return fail(absl::Status(verified.status().code(),
                               absl::StrCat(verified.status().message(),
                                            " (corrupted in transit? the put is aborted)")));
    }
    blocks.push_back(std::move(buffers[i]));
  }
  return Publish(r->key, std::move(manifest), std::move(blocks), r->total, r->ttl);
}

absl::StatusOr<v1::Manifest> Store::Publish(const VersionKey& key, v1::Manifest manifest,
                                            std::vector<BufferPtr> blocks, uint64_t reserved,
                                            absl::Duration ttl) {
  absl::Time now = clock_->Now();
  manifest.set_created_unix_micros(absl::ToUnixMicros(now));
  manifest.set_ttl_seconds(static_cast<uint32_t>(absl::ToInt64Seconds(ttl)));
  const uint64_t bytes = ManifestBlockBytes(manifest);
  absl::StatusOr<v1::Manifest> result =
      PublishUnderKeyLock(key, std::move(manifest), std::move(blocks), reserved, ttl, bytes, now);
  // Outside the key lock: eviction flushes other keys, whose stripe may be
  // this one, and the GC takes the older versions' key locks.
  if (result.ok()) {
    if (options_.keep_versions > 0) CollectOldVersions(key);
    EvictIfNeeded();
  }
  return result;
}

absl::StatusOr<v1::Manifest> Store::PublishUnderKeyLock(const VersionKey& key,
                                                        v1::Manifest manifest,
                                                        std::vector<BufferPtr> blocks,
                                                        uint64_t reserved, absl::Duration ttl,
                                                        uint64_t bytes, absl::Time now) {
  auto unreserve = [&](absl::Status s) {
    absl::MutexLock lock(&mu_);
    quota_.Unreserve(key.tenant, reserved);
    return s;
  };
  absl::MutexLock key_lock(&KeyMutex(key));
  bool replace = false;
  bool write_now = rocks_ != nullptr && (options_.tiers == TierMode::kRocksDbOnly ||
                                         options_.write_mode == WriteMode::kWriteThrough);
  {
    absl::MutexLock lock(&mu_);
    auto it = index_.find(key);
    replace = it != index_.end();
    if (replace && leases_.PinCount(key) > 0) {
      quota_.Unreserve(key.tenant, reserved);
      return absl::FailedPreconditionError(
          absl::StrCat(key.DebugString(), " is pinned; it cannot be replaced until unpinned"));
    }
    if (dram_ != nullptr && !dram_->CanEverHold(bytes)) {
      if (rocks_ == nullptr) {
        quota_.Unreserve(key.tenant, reserved);
        return absl::ResourceExhaustedError(absl::StrCat(
            "version of ", bytes, " bytes does not fit the DRAM-only store right now"));
      }
      write_now = true;  // Too big to cache: straight to disk even in write-back.
    }
  }
  if (write_now) {
    if (absl::Status s = rocks_->WriteVersion(key, manifest, blocks, replace); !s.ok()) {
      return unreserve(s);
    }
  }
  auto shared = std::make_shared<const v1::Manifest>(manifest);
  {
    absl::MutexLock lock(&mu_);
    bool stale_on_disk = false;
    if (auto it = index_.find(key); it != index_.end()) {
      stale_on_disk = it->second.on_disk || it->second.dirty;
      RemoveEntryLocked(it);
    }
    Entry e;
    e.manifest = shared;
    e.bytes = bytes;
    e.generation = next_generation_++;
    e.on_disk = write_now;
    e.dirty = rocks_ != nullptr && !write_now;
    e.last_access = now;
    e.ttl = ttl;
    // A version not on disk must be in DRAM (even if pins taken since the
    // check above leave it over the high watermark for a while).
    if (dram_ != nullptr && (!e.on_disk || dram_->CanEverHold(bytes))) {
      dram_->Insert(key, std::move(blocks), bytes);
    }
    quota_.Commit(key.tenant, reserved, bytes);
    if (e.on_disk) {
      disk_bytes_ += bytes;
      ++disk_objects_;
    }
    if (e.dirty) {
      ++dirty_versions_;
      flush_queue_.push_back(key);
    }
    // The flush of a write-back version must first drop the blocks of the
    // version it replaced.
    e.stale_on_disk = stale_on_disk && !write_now;
    index_[key] = std::move(e);
    UpdateGaugesLocked();
  }
  return manifest;
}

absl::Status Store::AbortPut(uint64_t put_id) {
  absl::MutexLock lock(&mu_);
  auto it = reservations_.find(put_id);
  if (it == reservations_.end()) {
    return absl::NotFoundError(absl::StrCat("put ", put_id, " is not open"));
  }
  DropReservationLocked(*it->second);
  reservations_.erase(it);
  return absl::OkStatus();
}

absl::Status Store::CheckPutTenant(uint64_t put_id, absl::string_view tenant) const {
  absl::MutexLock lock(&mu_);
  auto it = reservations_.find(put_id);
  if (it == reservations_.end() || it->second->key.tenant != tenant) {
    return absl::NotFoundError(absl::StrCat("put ", put_id, " is not open"));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::Manifest> Store::Put(v1::Manifest manifest,
                                        std::span<const absl::string_view> blocks,
                                        absl::Duration ttl) {
  if (!manifest.has_key()) return absl::InvalidArgumentError("manifest.key: missing");
  std::vector<uint64_t> sizes;
  sizes.reserve(blocks.size());
  for (absl::string_view b : blocks) sizes.push_back(b.size());
  absl::StatusOr<PutReservation> r = BeginPut(manifest.key(), sizes, ttl);
  if (!r.ok()) return r.status();
  for (size_t i = 0; i < blocks.size(); ++i) {
    absl::Status s = WriteChunk(r->put_id, static_cast<uint32_t>(i), 0, blocks[i]);
    if (!s.ok()) {
      AbortPut(r->put_id).IgnoreError();
      return s;
    }
  }
  return CommitPut(r->put_id, std::move(manifest));
}

// ---- reads -----------------------------------------------------------------

absl::StatusOr<std::shared_ptr<const v1::Manifest>> Store::Lookup(const v1::ConversationKey& key,
                                                                  bool latest) {
  KRUL_RETURN_IF_ERROR(ValidateConversationKey(key));
  KRUL_RETURN_IF_ERROR(CheckTenant(key.tenant()));
  absl::MutexLock lock(&mu_);
  auto it = FindLocked(VersionKey::FromProto(key), latest);
  if (it == index_.end()) {
    if (metrics_ != nullptr) metrics_->Miss();
    return absl::NotFoundError(
        latest ? absl::StrCat("no committed version of ", key.tenant(), "/", key.conversation_id())
               : absl::StrCat("no committed version ", KeyString(key)));
  }
  if (!it->second.corrupt.ok()) return it->second.corrupt;
  it->second.last_access = clock_->Now();
  if (dram_ != nullptr) dram_->Touch(it->first);
  return it->second.manifest;
}

absl::StatusOr<BufferPtr> Store::GetBlock(const VersionKey& key, uint32_t index) {
  v1::BlockRef ref;
  {
    absl::MutexLock lock(&mu_);
    auto it = index_.find(key);
    if (it == index_.end()) {
      if (metrics_ != nullptr) metrics_->Miss();
      return absl::NotFoundError(absl::StrCat("no committed version ", key.DebugString()));
    }
    Entry& e = it->second;
    if (!e.corrupt.ok()) return e.corrupt;
    if (index >= static_cast<uint32_t>(e.manifest->blocks_size())) {
      return absl::InvalidArgumentError(absl::StrCat("block_indices: ", index, " but ",
                                                     key.DebugString(), " has ",
                                                     e.manifest->blocks_size(), " blocks"));
    }
    e.last_access = clock_->Now();
    if (dram_ != nullptr) {
      if (BufferPtr b = dram_->GetBlock(key, index)) {
        if (metrics_ != nullptr) metrics_->Hit("dram");
        return b;
      }
    }
    if (!e.on_disk) {
      return absl::InternalError(
          absl::StrCat(key.DebugString(), " is neither in DRAM nor on disk"));
    }
    ref = e.manifest->blocks(static_cast<int>(index));
  }
  // Disk reads happen without the lock. Blocks are not promoted to DRAM on
  // read: a conversation's version is restored once, and the next turn
  // writes a new version, so promotion would mostly evict useful data.
  absl::StatusOr<BufferPtr> b = rocks_->ReadBlock(key, index, allocator_);
  if (!b.ok()) {
    if (b.status().code() == absl::StatusCode::kDataLoss) CountChecksumFailure();
    return b.status();
  }
  if (absl::StatusOr<DecodedBlock> v = VerifyBlock(ref, (*b)->view()); !v.ok()) {
    CountChecksumFailure();
    KRUL_LOG(ERROR) << "kvstore: " << key.DebugString() << ": " << v.status();
    return absl::DataLossError(absl::StrCat(key.DebugString(), " on disk: ", v.status().message()));
  }
  if (metrics_ != nullptr) metrics_->Hit("rocksdb");
  return b;
}

// ---- lifecycle of versions -------------------------------------------------

void Store::RemoveEntryLocked(std::map<VersionKey, Entry>::iterator it) {
  const Entry& e = it->second;
  quota_.Release(it->first.tenant, e.bytes);
  if (dram_ != nullptr) dram_->Erase(it->first);
  if (e.on_disk) {
    disk_bytes_ -= std::min(disk_bytes_, e.bytes);
    disk_objects_ -= std::min<uint64_t>(disk_objects_, 1);
  }
  if (e.dirty) dirty_versions_ -= std::min<uint64_t>(dirty_versions_, 1);
  index_.erase(it);
}

absl::Status Store::DeleteOne(const VersionKey& key, bool only_if_expired, bool* deleted,
                              bool skip_pinned) {
  *deleted = false;
  absl::MutexLock key_lock(&KeyMutex(key));
  {
    absl::MutexLock lock(&mu_);
    auto it = index_.find(key);
    if (it == index_.end()) return absl::OkStatus();
    if (leases_.PinCount(key) > 0) {
      if (only_if_expired || skip_pinned) return absl::OkStatus();
      return absl::FailedPreconditionError(
          absl::StrCat(key.DebugString(), " is pinned; unpin it or let the lease expire"));
    }
    if (only_if_expired) {
      const Entry& e = it->second;
      if (e.ttl <= absl::ZeroDuration() || e.last_access + e.ttl > clock_->Now()) {
        return absl::OkStatus();
      }
    }
    RemoveEntryLocked(it);
    UpdateGaugesLocked();
  }
  *deleted = true;
  // The version is already invisible; a failure here leaves garbage on disk
  // that reappears after a restart, so report it.
  if (rocks_ != nullptr) return rocks_->DeleteVersion(key);
  return absl::OkStatus();
}

void Store::CollectOldVersions(const VersionKey& key) {
  std::vector<VersionKey> old;
  {
    absl::MutexLock lock(&mu_);
    std::vector<VersionKey> turns;  // Ascending.
    for (auto it = index_.lower_bound(VersionKey{key.tenant, key.conversation_id, 0});
         it != index_.end() && it->first.tenant == key.tenant &&
         it->first.conversation_id == key.conversation_id;
         ++it) {
      turns.push_back(it->first);
    }
    if (turns.size() <= options_.keep_versions) return;
    old.assign(turns.begin(), turns.end() - options_.keep_versions);
  }
  for (const VersionKey& k : old) {
    bool deleted = false;
    absl::Status s = DeleteOne(k, /*only_if_expired=*/false, &deleted, /*skip_pinned=*/true);
    if (!s.ok()) KRUL_LOG(ERROR) << "kvstore: version GC of " << k.DebugString() << ": " << s;
    if (deleted) {
      ++gc_deletions_;
      if (metrics_ != nullptr) metrics_->VersionCollected();
    }
  }
}

absl::StatusOr<int> Store::Delete(const v1::ConversationKey& key, bool all_turns) {
  KRUL_RETURN_IF_ERROR(ValidateConversationKey(key));
  KRUL_RETURN_IF_ERROR(CheckTenant(key.tenant()));
  std::vector<VersionKey> keys;
  {
    absl::MutexLock lock(&mu_);
    VersionKey vk = VersionKey::FromProto(key);
    if (all_turns) {
      for (auto it = index_.lower_bound(VersionKey{vk.tenant, vk.conversation_id, 0});
           it != index_.end() && it->first.tenant == vk.tenant &&
           it->first.conversation_id == vk.conversation_id;
           ++it) {
        keys.push_back(it->first);
      }
    } else if (index_.contains(vk)) {
      keys.push_back(vk);
    }
  }
  if (keys.empty()) {
    return absl::NotFoundError(
        absl::StrCat("no committed version ", KeyString(key), all_turns ? " (any turn)" : ""));
  }
  int n = 0;
  for (const VersionKey& k : keys) {
    bool deleted = false;
    KRUL_RETURN_IF_ERROR(DeleteOne(k, /*only_if_expired=*/false, &deleted));
    n += deleted ? 1 : 0;
  }
  return n;
}

absl::StatusOr<Lease> Store::Pin(const v1::ConversationKey& key, absl::Duration duration) {
  KRUL_RETURN_IF_ERROR(ValidateConversationKey(key));
  KRUL_RETURN_IF_ERROR(CheckTenant(key.tenant()));
  if (duration < absl::ZeroDuration() || duration > options_.max_lease) {
    return absl::InvalidArgumentError(absl::StrCat("lease: ", absl::FormatDuration(duration),
                                                   " is not in [0, ",
                                                   absl::FormatDuration(options_.max_lease), "]"));
  }
  if (duration == absl::ZeroDuration()) duration = options_.default_lease;
  VersionKey vk = VersionKey::FromProto(key);
  Lease lease;
  bool promote = false;
  uint64_t generation = 0;
  uint64_t bytes = 0;
  std::shared_ptr<const v1::Manifest> manifest;
  {
    absl::MutexLock lock(&mu_);
    auto it = index_.find(vk);
    if (it == index_.end()) {
      return absl::NotFoundError(absl::StrCat("no committed version ", vk.DebugString()));
    }
    if (!it->second.corrupt.ok()) return it->second.corrupt;
    absl::Time now = clock_->Now();
    lease.expires = now + duration;
    lease.lease_id = leases_.Grant(vk, lease.expires);
    it->second.last_access = now;
    if (dram_ != nullptr) {
      dram_->SetPinned(vk, true);
      promote = rocks_ != nullptr && !dram_->Contains(vk) && dram_->CanEverHold(it->second.bytes);
    }
    generation = it->second.generation;
    bytes = it->second.bytes;
    manifest = it->second.manifest;
  }
  if (!promote) return lease;

  // Bring the pinned version into DRAM so that the restore that follows
  // reads memory, not disk.
  std::vector<BufferPtr> blocks;
  for (int i = 0; i < manifest->blocks_size(); ++i) {
    absl::StatusOr<BufferPtr> b = rocks_->ReadBlock(vk, static_cast<uint32_t>(i), allocator_);
    absl::Status s = b.status();
    if (s.ok()) s = VerifyBlock(manifest->blocks(i), (*b)->view()).status();
    if (!s.ok()) {
      if (s.code() == absl::StatusCode::kDataLoss) CountChecksumFailure();
      Unpin(lease.lease_id).IgnoreError();
      return s;
    }
    blocks.push_back(*std::move(b));
  }
  {
    absl::MutexLock lock(&mu_);
    auto it = index_.find(vk);
    if (it != index_.end() && it->second.generation == generation && !dram_->Contains(vk) &&
        dram_->CanEverHold(bytes)) {
      dram_->Insert(vk, std::move(blocks), bytes);
      dram_->SetPinned(vk, leases_.PinCount(vk) > 0);
      UpdateGaugesLocked();
    }
  }
  EvictIfNeeded();
  return lease;
}

absl::Status Store::Unpin(uint64_t lease_id) {
  {
    absl::MutexLock lock(&mu_);
    absl::StatusOr<VersionKey> key = leases_.Release(lease_id);
    if (!key.ok()) return key.status();
    if (dram_ != nullptr && leases_.PinCount(*key) == 0) dram_->SetPinned(*key, false);
  }
  // Pinned versions may have held DRAM above the high watermark.
  EvictIfNeeded();
  return absl::OkStatus();
}

absl::Status Store::CheckLeaseTenant(uint64_t lease_id, absl::string_view tenant) const {
  absl::MutexLock lock(&mu_);
  const VersionKey* key = leases_.Find(lease_id);
  if (key == nullptr || key->tenant != tenant) {
    return absl::NotFoundError(absl::StrCat("lease ", lease_id, " is not active"));
  }
  return absl::OkStatus();
}

// ---- eviction and write-back -----------------------------------------------

void Store::EvictIfNeeded() {
  // Each round evicts clean victims and flushes dirty ones; flushed victims
  // become clean and go in the next round.
  for (int round = 0; round < 16; ++round) {
    std::vector<VersionKey> to_flush;
    {
      absl::MutexLock lock(&mu_);
      if (dram_ == nullptr || !dram_->above_high()) return;
      for (const VersionKey& k : dram_->PickVictims()) {
        auto it = index_.find(k);
        if (it == index_.end()) {
          dram_->Erase(k);
          continue;
        }
        if (it->second.dirty) {
          to_flush.push_back(k);
          continue;
        }
        dram_->Erase(k);
        ++evictions_;
        if (metrics_ != nullptr) metrics_->Eviction("dram");
        // Without a disk tier, leaving DRAM means leaving the store.
        if (rocks_ == nullptr) RemoveEntryLocked(it);
      }
      UpdateGaugesLocked();
      if (to_flush.empty()) return;
    }
    for (const VersionKey& k : to_flush) {
      if (absl::Status s = FlushVersion(k); !s.ok()) {
        KRUL_LOG(ERROR) << "kvstore: write-back of " << k.DebugString() << " failed: " << s;
        return;  // DRAM stays above high until the disk recovers.
      }
    }
  }
}

absl::Status Store::FlushVersion(const VersionKey& key) {
  absl::MutexLock key_lock(&KeyMutex(key));
  std::shared_ptr<const v1::Manifest> manifest;
  std::vector<BufferPtr> blocks;
  uint64_t generation = 0;
  bool replace = false;
  {
    absl::MutexLock lock(&mu_);
    auto it = index_.find(key);
    if (it == index_.end() || !it->second.dirty) return absl::OkStatus();
    manifest = it->second.manifest;
    blocks = dram_->Blocks(key);
    generation = it->second.generation;
    replace = it->second.stale_on_disk;
  }
  if (blocks.size() != static_cast<size_t>(manifest->blocks_size())) {
    return absl::InternalError(
        absl::StrCat(key.DebugString(), ": dirty version is missing from DRAM"));
  }
  KRUL_RETURN_IF_ERROR(rocks_->WriteVersion(key, *manifest, blocks, replace));
  absl::MutexLock lock(&mu_);
  auto it = index_.find(key);
  if (it != index_.end() && it->second.generation == generation && it->second.dirty) {
    it->second.dirty = false;
    it->second.stale_on_disk = false;
    it->second.on_disk = true;
    dirty_versions_ -= std::min<uint64_t>(dirty_versions_, 1);
    disk_bytes_ += it->second.bytes;
    ++disk_objects_;
    UpdateGaugesLocked();
  }
  return absl::OkStatus();
}

void Store::FlusherLoop() {
  for (;;) {
    VersionKey key;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_flusher_ || !flush_queue_.empty();
      };
      mu_.Await(absl::Condition(&ready));
      if (flush_queue_.empty()) return;  // Stopping, and nothing left.
      key = std::move(flush_queue_.front());
      flush_queue_.pop_front();
    }
    if (absl::Status s = FlushVersion(key); !s.ok()) {
      KRUL_LOG(ERROR) << "kvstore: write-back of " << key.DebugString() << " failed: " << s
                      << "; retrying";
      absl::SleepFor(absl::Milliseconds(100));
      absl::MutexLock lock(&mu_);
      if (!stop_flusher_) flush_queue_.push_back(std::move(key));
    }
  }
}

// ---- operations ------------------------------------------------------------

void Store::RunMaintenance() {
  absl::Time now = clock_->Now();
  std::vector<VersionKey> expired;
  {
    absl::MutexLock lock(&mu_);
    for (const VersionKey& k : leases_.CollectExpired(now)) {
      if (dram_ != nullptr && leases_.PinCount(k) == 0) dram_->SetPinned(k, false);
    }
    std::vector<uint64_t> stale_puts;
    for (const auto& [id, r] : reservations_) {
      if (r->deadline <= now) stale_puts.push_back(id);
    }
    for (uint64_t id : stale_puts) {
      KRUL_LOG(WARNING) << "kvstore: put " << id << " of " << reservations_[id]->key.DebugString()
                        << " was not committed in time; aborted";
      DropReservationLocked(*reservations_[id]);
      reservations_.erase(id);
    }
    for (const auto& [k, e] : index_) {
      if (e.ttl > absl::ZeroDuration() && e.last_access + e.ttl <= now &&
          leases_.PinCount(k) == 0) {
        expired.push_back(k);
      }
    }
  }
  for (const VersionKey& k : expired) {
    bool deleted = false;
    absl::Status s = DeleteOne(k, /*only_if_expired=*/true, &deleted);
    if (!s.ok()) KRUL_LOG(ERROR) << "kvstore: TTL delete of " << k.DebugString() << ": " << s;
    if (deleted) ++ttl_expirations_;
  }
  EvictIfNeeded();
}

void Store::BeginDrain() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
}

bool Store::draining() const {
  absl::MutexLock lock(&mu_);
  return draining_;
}

size_t Store::WaitForOpenPuts(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto none_open = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return reservations_.empty(); };
  mu_.AwaitWithTimeout(absl::Condition(&none_open), timeout);
  return reservations_.size();
}

absl::Status Store::Flush() {
  if (rocks_ == nullptr) return absl::OkStatus();
  std::vector<VersionKey> dirty;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [k, e] : index_) {
      if (e.dirty) dirty.push_back(k);
    }
  }
  absl::Status first;
  for (const VersionKey& k : dirty) first.Update(FlushVersion(k));
  first.Update(rocks_->Flush());
  return first;
}

StoreStats Store::Stats() const {
  absl::MutexLock lock(&mu_);
  StoreStats s;
  if (dram_ != nullptr) {
    s.dram_bytes = dram_->used_bytes();
    s.dram_objects = dram_->objects();
    s.dram_capacity_bytes = dram_->capacity_bytes();
  }
  s.rocksdb_bytes = disk_bytes_;
  s.rocksdb_objects = disk_objects_;
  s.staging_bytes = staging_bytes_;
  s.open_puts = reservations_.size();
  s.active_leases = leases_.size();
  s.evictions = evictions_.load();
  s.checksum_failures = checksum_failures_.load();
  s.ttl_expirations = ttl_expirations_.load();
  s.gc_deletions = gc_deletions_.load();
  s.dirty_versions = dirty_versions_;
  return s;
}

void Store::UpdateGaugesLocked() {
  if (metrics_ == nullptr) return;
  if (dram_ != nullptr) metrics_->SetTier("dram", dram_->used_bytes(), dram_->objects());
  metrics_->SetTier("rocksdb", disk_bytes_, disk_objects_);
}

void Store::CountChecksumFailure() {
  ++checksum_failures_;
  if (metrics_ != nullptr) metrics_->ChecksumFailure();
}

}  // namespace krul::kvstore
