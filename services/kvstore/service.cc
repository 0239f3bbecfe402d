#include "kvstore/service.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <google/protobuf/unknown_field_set.h>

#include <chrono>
#include <span>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "krul/base/status_macros.h"
#include "krul/kvformat/manifest.h"
#include "krul/rpc/grpc_status.h"
#include "kvstore/metrics.h"

namespace krul::kvstore {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;

// Appends the numbers of unknown fields anywhere in `m` to `out`.
void CollectUnknownFields(const Message& m, const std::string& path,
                          std::vector<std::string>* out) {
  const google::protobuf::Reflection* refl = m.GetReflection();
  const google::protobuf::UnknownFieldSet& unknown = refl->GetUnknownFields(m);
  for (int i = 0; i < unknown.field_count(); ++i) {
    out->push_back(absl::StrCat(path, "#", unknown.field(i).number()));
  }
  std::vector<const FieldDescriptor*> fields;
  refl->ListFields(m, &fields);
  for (const FieldDescriptor* f : fields) {
    if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) continue;
    std::string sub = path.empty() ? f->name() : absl::StrCat(path, ".", f->name());
    if (f->is_repeated()) {
      for (int i = 0; i < refl->FieldSize(m, f); ++i) {
        CollectUnknownFields(refl->GetRepeatedMessage(m, f, i), absl::StrCat(sub, "[", i, "]"),
                             out);
      }
    } else {
      CollectUnknownFields(refl->GetMessage(m, f), sub, out);
    }
  }
}

absl::Status CheckKnownFields(const Message& m) {
  std::vector<std::string> unknown;
  CollectUnknownFields(m, "", &unknown);
  if (unknown.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(m.GetDescriptor()->name(), " has fields this server does not know (",
                   absl::StrJoin(unknown, ", "), "); is the client newer than the server?"));
}

// The key a request names, scoped to its caller (see service.h): with a
// credential the tenant field must be empty or the caller's own, and is set
// to it.
absl::StatusOr<v1::ConversationKey> ScopeKey(const Caller& caller, const v1::ConversationKey& key,
                                             absl::string_view field) {
  if (caller.trusted) return key;
  if (!key.tenant().empty() && key.tenant() != caller.tenant) {
    return absl::PermissionDeniedError(
        absl::StrCat(field, ".tenant: '", key.tenant(), "' is not the tenant of this credential"));
  }
  v1::ConversationKey out = key;
  out.set_tenant(caller.tenant);
  return out;
}

// Checks a keyed request; returns its key scoped to the caller.
absl::StatusOr<v1::ConversationKey> CheckKey(const Message& req, bool has_key,
                                             const v1::ConversationKey& key, const Caller& caller) {
  KRUL_RETURN_IF_ERROR(CheckKnownFields(req));
  if (!has_key) return absl::InvalidArgumentError("key: missing");
  absl::StatusOr<v1::ConversationKey> scoped = ScopeKey(caller, key, "key");
  if (!scoped.ok()) return scoped.status();
  KRUL_RETURN_IF_ERROR(ValidateConversationKey(*scoped));
  return scoped;
}

// Scopes the key of a manifest a caller wants to store.
absl::Status ScopeManifestKey(const Caller& caller, v1::Manifest* manifest) {
  if (caller.trusted || !manifest->has_key()) return absl::OkStatus();
  absl::StatusOr<v1::ConversationKey> scoped = ScopeKey(caller, manifest->key(), "manifest.key");
  if (!scoped.ok()) return scoped.status();
  *manifest->mutable_key() = *std::move(scoped);
  return absl::OkStatus();
}

// The requested block indices, or all of them when none are given.
absl::StatusOr<std::vector<uint32_t>> ResolveIndices(
    const google::protobuf::RepeatedField<uint32_t>& requested, const v1::Manifest& manifest) {
  std::vector<uint32_t> out;
  if (requested.empty()) {
    for (int i = 0; i < manifest.blocks_size(); ++i) out.push_back(static_cast<uint32_t>(i));
    return out;
  }
  if (requested.size() > manifest.blocks_size() * 4 + 16) {
    return absl::InvalidArgumentError("block_indices: far more indices than the version has");
  }
  for (uint32_t i : requested) {
    if (i >= static_cast<uint32_t>(manifest.blocks_size())) {
      return absl::InvalidArgumentError(absl::StrCat("block_indices: ", i, " but the version has ",
                                                     manifest.blocks_size(), " blocks"));
    }
    out.push_back(i);
  }
  return out;
}

int64_t UnixMicros(absl::Time t) { return absl::ToUnixMicros(t); }

}  // namespace

absl::Status KvStoreService::DescribeBlocks(const std::vector<BlockMemory>& blocks,
                                            absl::Time expires, Grant* grant,
                                            std::vector<v1::TransferTarget*>& targets) {
  // Heap blocks get a region of their own; arena blocks already have one.
  std::vector<const MemoryRegion*> regions(blocks.size());
  std::vector<uint64_t> offsets(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (blocks[i].region != nullptr) {
      regions[i] = blocks[i].region;
      offsets[i] = blocks[i].region_offset;
    } else {
      absl::StatusOr<std::unique_ptr<MemoryRegion>> r =
          transport_->RegisterRegion(blocks[i].data, blocks[i].size);
      if (!r.ok()) return r.status();
      regions[i] = r->get();
      offsets[i] = 0;
      grant->regions.push_back(*std::move(r));
    }
    grant->keepalive.push_back(blocks[i].keepalive);
  }
  if (options_.grant_scope == GrantScope::kChunk && arena_ != nullptr) {
    // Whole-chunk grants, identical across requests: clients cache them.
    std::vector<bool> done(blocks.size(), false);
    for (size_t i = 0; i < blocks.size(); ++i) {
      if (blocks[i].region == nullptr) continue;
      std::string desc = arena_->ChunkDescriptor(blocks[i].region);
      if (desc.empty()) continue;
      targets[i]->set_transport_descriptor(std::move(desc));
      targets[i]->set_remote_offset(offsets[i]);
      done[i] = true;
    }
    std::vector<BlockMemory> rest;
    std::vector<v1::TransferTarget*> rest_targets;
    for (size_t i = 0; i < blocks.size(); ++i) {
      if (done[i]) continue;
      BlockMemory m = blocks[i];
      m.region = regions[i];
      m.region_offset = offsets[i];
      rest.push_back(m);
      rest_targets.push_back(targets[i]);
    }
    return DescribeRuns(rest, expires, grant, rest_targets);
  }
  std::vector<BlockMemory> all = blocks;
  for (size_t i = 0; i < all.size(); ++i) {
    all[i].region = regions[i];
    all[i].region_offset = offsets[i];
  }
  return DescribeRuns(all, expires, grant, targets);
}

absl::Status KvStoreService::DescribeRuns(const std::vector<BlockMemory>& blocks,
                                          absl::Time expires, Grant* grant,
                                          std::vector<v1::TransferTarget*>& targets) {
  // Blocks that follow each other in one region share one descriptor, so
  // the client imports (maps) it once per request instead of per block.
  std::vector<const MemoryRegion*> regions(blocks.size());
  std::vector<uint64_t> offsets(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    regions[i] = blocks[i].region;
    offsets[i] = blocks[i].region_offset;
  }
  for (size_t i = 0; i < blocks.size();) {
    size_t j = i + 1;
    uint64_t end = offsets[i] + blocks[i].size;
    while (j < blocks.size() && regions[j] == regions[i] && offsets[j] == end) {
      end += blocks[j].size;
      ++j;
    }
    absl::StatusOr<std::string> desc = regions[i]->Describe(offsets[i], end - offsets[i], expires);
    if (!desc.ok()) return desc.status();
    for (size_t k = i; k < j; ++k) {
      targets[k]->set_transport_descriptor(*desc);
      targets[k]->set_remote_offset(offsets[k] - offsets[i]);
    }
    grant->descriptors.emplace_back(regions[i], *std::move(desc));
    i = j;
  }
  return absl::OkStatus();
}

KvStoreService::Grant::Grant(Grant&& other) noexcept
    : tenant(std::move(other.tenant)),
      descriptors(std::exchange(other.descriptors, {})),
      regions(std::move(other.regions)),
      keepalive(std::move(other.keepalive)),
      expires(other.expires) {}

KvStoreService::Grant& KvStoreService::Grant::operator=(Grant&& other) noexcept {
  if (this != &other) {
    Grant old(std::move(*this));  // Revoked and released here.
    tenant = std::move(other.tenant);
    descriptors = std::exchange(other.descriptors, {});
    regions = std::move(other.regions);
    keepalive = std::move(other.keepalive);
    expires = other.expires;
  }
  return *this;
}

KvStoreService::Grant::~Grant() {
  // Before the regions and the memory go: the serving side refuses the
  // descriptors from now on (a descriptor of a destroyed region is refused
  // anyway; one of a long-lived arena chunk would not be).
  for (const auto& [region, descriptor] : descriptors) region->Revoke(descriptor);
}

KvStoreService::KvStoreService(Store* store, Clock* clock, KvStoreMetrics* metrics,
                               Transport* transport, const ServiceOptions& options,
                               const TransportArena* arena, const TenantAuth* auth)
    : store_(store),
      clock_(clock),
      metrics_(metrics),
      transport_(transport),
      options_(options),
      arena_(arena),
      auth_(auth),
      next_grant_id_(static_cast<uint64_t>(absl::ToUnixNanos(absl::Now())) | 1) {}

KvStoreService::~KvStoreService() {
  absl::MutexLock lock(&mu_);
  put_grants_.clear();
  read_grants_.clear();
}

void KvStoreService::SetDraining() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
}

void KvStoreService::ExpireGrants() {
  // Descriptor expiry is checked by the importing transport against its wall
  // clock, so grants expire by the wall clock too.
  absl::Time now = absl::Now();
  std::vector<Grant> dropped;  // Deregistered outside the lock.
  absl::MutexLock lock(&mu_);
  for (auto* grants : {&put_grants_, &read_grants_}) {
    std::vector<uint64_t> expired;
    for (const auto& [id, g] : *grants) {
      if (g.expires <= now) expired.push_back(id);
    }
    for (uint64_t id : expired) {
      dropped.push_back(std::move((*grants)[id]));
      grants->erase(id);
    }
  }
}

void KvStoreService::DropPutGrant(uint64_t put_id) {
  Grant g;
  absl::MutexLock lock(&mu_);
  auto it = put_grants_.find(put_id);
  if (it == put_grants_.end()) return;
  g = std::move(it->second);
  put_grants_.erase(it);
}

bool KvStoreService::WaitForIdle(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return inflight_ == 0; };
  return mu_.AwaitWithTimeout(absl::Condition(&idle), timeout);
}

template <typename Body>
grpc::Status KvStoreService::Handle(const grpc::ServerContext* ctx, const char* op, Body body) {
  auto start = std::chrono::steady_clock::now();
  {
    absl::MutexLock lock(&mu_);
    ++inflight_;
  }
  absl::Status s;
  Caller caller{"", true};
  if (ctx != nullptr && auth_ != nullptr) {
    absl::StatusOr<Caller> authenticated = auth_->Authenticate(*ctx);
    if (authenticated.ok()) {
      caller = *std::move(authenticated);
    } else {
      s = authenticated.status();
    }
  }
  if (s.ok()) s = body(static_cast<const Caller&>(caller));
  {
    absl::MutexLock lock(&mu_);
    --inflight_;
  }
  if (metrics_ != nullptr) {
    std::chrono::duration<double> d = std::chrono::steady_clock::now() - start;
    metrics_->Request(op, s.code(), d.count());
  }
  return ToGrpcStatus(s);
}

grpc::Status KvStoreService::BeginPut(grpc::ServerContext* ctx, const v1::BeginPutRequest* req,
                                      v1::BeginPutResponse* resp) {
  return Handle(ctx, "BeginPut", [&](const Caller& caller) -> absl::Status {
    absl::StatusOr<v1::ConversationKey> key = CheckKey(*req, req->has_key(), req->key(), caller);
    if (!key.ok()) return key.status();
    bool ucx = req->transport() == "ucx";
    if (!ucx && !req->transport().empty() && req->transport() != "grpc") {
      return absl::InvalidArgumentError(
          absl::StrCat("transport: '", req->transport(), "' is not one of grpc, ucx"));
    }
    if (ucx && transport_ == nullptr) {
      return absl::FailedPreconditionError(
          "transport: this server has no UCX data plane; use transport grpc");
    }
    std::span<const uint64_t> sizes(req->block_sizes().data(), req->block_sizes().size());
    absl::StatusOr<PutReservation> r =
        store_->BeginPut(*key, sizes, absl::Seconds(req->ttl_seconds()));
    if (!r.ok()) return r.status();
    resp->set_put_id(r->put_id);
    resp->set_deadline_unix_micros(UnixMicros(r->deadline));
    std::vector<v1::TransferTarget*> targets;
    for (size_t i = 0; i < r->block_sizes.size(); ++i) {
      v1::TransferTarget* t = resp->add_targets();
      t->set_index(static_cast<uint32_t>(i));
      t->set_size_bytes(r->block_sizes[i]);
      targets.push_back(t);
    }
    if (!ucx) return absl::OkStatus();
    Grant grant;
    grant.tenant = caller.tenant;
    grant.expires = absl::Now() + (r->deadline - clock_->Now());
    std::vector<BlockMemory> memory;
    absl::Status s;
    for (size_t i = 0; i < r->block_sizes.size() && s.ok(); ++i) {
      absl::StatusOr<StagingBlock> staging = store_->GetStagingBlock(r->put_id, i);
      if (!staging.ok()) {
        s = staging.status();
        break;
      }
      memory.push_back(BlockMemory{staging->data, staging->size, staging->region,
                                   staging->region_offset, staging->keepalive});
    }
    if (s.ok()) s = DescribeBlocks(memory, grant.expires, &grant, targets);
    if (!s.ok()) {
      { Grant dropped = std::move(grant); }  // Revoked and deregistered first.
      store_->AbortPut(r->put_id).IgnoreError();
      return absl::Status(s.code(), absl::StrCat("granting staging memory: ", s.message()));
    }
    absl::MutexLock lock(&mu_);
    put_grants_[r->put_id] = std::move(grant);
    return absl::OkStatus();
  });
}

grpc::Status KvStoreService::CommitPut(grpc::ServerContext* ctx, const v1::CommitPutRequest* req,
                                       v1::CommitPutResponse* resp) {
  return Handle(ctx, "CommitPut", [&](const Caller& caller) -> absl::Status {
    KRUL_RETURN_IF_ERROR(CheckKnownFields(*req));
    if (!caller.trusted) KRUL_RETURN_IF_ERROR(store_->CheckPutTenant(req->put_id(), caller.tenant));
    if (!req->has_manifest()) return absl::InvalidArgumentError("manifest: missing");
    v1::Manifest manifest = req->manifest();
    KRUL_RETURN_IF_ERROR(ScopeManifestKey(caller, &manifest));
    // Revoke the client's write access before the store verifies the bytes.
    bool had_grant = false;
    {
      absl::MutexLock lock(&mu_);
      had_grant = put_grants_.contains(req->put_id());
    }
    DropPutGrant(req->put_id());
    absl::StatusOr<v1::Manifest> m = store_->CommitPut(req->put_id(), std::move(manifest));
    if (!m.ok()) return m.status();
    if (had_grant && metrics_ != nullptr) {
      metrics_->Transfer("ucx", "in", ManifestBlockBytes(*m));
    }
    *resp->mutable_manifest() = *std::move(m);
    return absl::OkStatus();
  });
}

grpc::Status KvStoreService::AbortPut(grpc::ServerContext* ctx, const v1::AbortPutRequest* req,
                                      v1::AbortPutResponse*) {
  return Handle(ctx, "AbortPut", [&](const Caller& caller) -> absl::Status {
    KRUL_RETURN_IF_ERROR(CheckKnownFields(*req));
    if (!caller.trusted) KRUL_RETURN_IF_ERROR(store_->CheckPutTenant(req->put_id(), caller.tenant));
    DropPutGrant(req->put_id());
    return store_->AbortPut(req->put_id());
  });
}

grpc::Status KvStoreService::Lookup(grpc::ServerContext* ctx, const v1::LookupRequest* req,
                                    v1::LookupResponse* resp) {
  return Handle(ctx, "Lookup", [&](const Caller& caller) -> absl::Status {
    absl::StatusOr<v1::ConversationKey> key = CheckKey(*req, req->has_key(), req->key(), caller);
    if (!key.ok()) return key.status();
    absl::StatusOr<std::shared_ptr<const v1::Manifest>> m = store_->Lookup(*key, req->latest());
    if (!m.ok()) return m.status();
    *resp->mutable_manifest() = **m;
    return absl::OkStatus();
  });
}

grpc::Status KvStoreService::Get(grpc::ServerContext* ctx, const v1::GetRequest* req,
                                 v1::GetResponse* resp) {
  return Handle(ctx, "Get", [&](const Caller& caller) -> absl::Status {
    absl::StatusOr<v1::ConversationKey> key = CheckKey(*req, req->has_key(), req->key(), caller);
    if (!key.ok()) return key.status();
    absl::StatusOr<std::shared_ptr<const v1::Manifest>> m = store_->Lookup(*key, req->latest());
    if (!m.ok()) return m.status();
    absl::StatusOr<std::vector<uint32_t>> indices = ResolveIndices(req->block_indices(), **m);
    if (!indices.ok()) return indices.status();
    uint64_t total = 0;
    for (uint32_t i : *indices) total += (*m)->blocks(static_cast<int>(i)).encoded_bytes();
    if (total > options_.max_inline_bytes) {
      return absl::FailedPreconditionError(
          absl::StrCat("Get of ", total, " bytes exceeds the inline limit of ",
                       options_.max_inline_bytes, " bytes; use ReadBlocks or GrantRead"));
    }
    VersionKey version = VersionKey::FromProto((*m)->key());
    for (uint32_t i : *indices) {
      absl::StatusOr<BufferPtr> b = store_->GetBlock(version, i);
      if (!b.ok()) return b.status();
      resp->add_blocks((*b)->data(), (*b)->size());
    }
    *resp->mutable_manifest() = **m;
    if (metrics_ != nullptr) metrics_->Transfer("grpc", "out", total);
    return absl::OkStatus();
  });
}

grpc::Status KvStoreService::Put(grpc::ServerContext* ctx, const v1::PutRequest* req,
                                 v1::PutResponse* resp) {
  return Handle(ctx, "Put", [&](const Caller& caller) -> absl::Status {
    KRUL_RETURN_IF_ERROR(CheckKnownFields(*req));
    if (!req->has_manifest()) return absl::InvalidArgumentError("manifest: missing");
    v1::Manifest manifest = req->manifest();
    KRUL_RETURN_IF_ERROR(ScopeManifestKey(caller, &manifest));
    uint64_t total = 0;
    std::vector<absl::string_view> blocks;
    for (const std::string& b : req->blocks()) {
      total += b.size();
      blocks.emplace_back(b);
    }
    if (total > options_.max_inline_bytes) {
      return absl::FailedPreconditionError(
          absl::StrCat("Put of ", total, " bytes exceeds the inline limit of ",
                       options_.max_inline_bytes, " bytes; use BeginPut"));
    }
    if (req->blocks_size() != req->manifest().blocks_size()) {
      return absl::InvalidArgumentError(absl::StrCat("blocks: ", req->blocks_size(),
                                                     " given, manifest names ",
                                                     req->manifest().blocks_size()));
    }
    absl::StatusOr<v1::Manifest> m =
        store_->Put(std::move(manifest), blocks, absl::Seconds(req->ttl_seconds()));
    if (!m.ok()) return m.status();
    *resp->mutable_manifest() = *std::move(m);
    if (metrics_ != nullptr) metrics_->Transfer("grpc", "in", total);
    return absl::OkStatus();
  });
}

grpc::Status KvStoreService::WriteBlocks(grpc::ServerContext* ctx,
                                         grpc::ServerReader<v1::BlockChunk>* reader,
                                         v1::WriteBlocksResponse* resp) {
  return Handle(ctx, "WriteBlocks", [&](const Caller& caller) -> absl::Status {
    v1::BlockChunk chunk;
    uint64_t received = 0;
    absl::Status status;
    uint64_t owned_put = 0;  // The last put id checked to be the caller's.
    while (reader->Read(&chunk)) {
      status = CheckKnownFields(chunk);
      if (status.ok() && !caller.trusted && (owned_put == 0 || chunk.put_id() != owned_put)) {
        status = store_->CheckPutTenant(chunk.put_id(), caller.tenant);
        if (status.ok()) owned_put = chunk.put_id();
      }
      if (status.ok() && chunk.data().size() > options_.chunk_bytes) {
        status = absl::InvalidArgumentError(absl::StrCat("data: chunk of ", chunk.data().size(),
                                                         " bytes exceeds ", options_.chunk_bytes));
      }
      if (status.ok()) {
        status = store_->WriteChunk(chunk.put_id(), chunk.index(), chunk.offset(), chunk.data());
      }
      if (!status.ok()) break;
      received += chunk.data().size();
    }
    if (metrics_ != nullptr && received > 0) metrics_->Transfer("grpc", "in", received);
    resp->set_bytes_received(received);
    return status;
  });
}

grpc::Status KvStoreService::ReadBlocks(grpc::ServerContext* ctx, const v1::ReadBlocksRequest* req,
                                        grpc::ServerWriter<v1::BlockChunk>* writer) {
  return Handle(ctx, "ReadBlocks", [&](const Caller& caller) -> absl::Status {
    absl::StatusOr<v1::ConversationKey> scoped = CheckKey(*req, req->has_key(), req->key(), caller);
    if (!scoped.ok()) return scoped.status();
    absl::StatusOr<std::shared_ptr<const v1::Manifest>> m = store_->Lookup(*scoped, false);
    if (!m.ok()) return m.status();
    absl::StatusOr<std::vector<uint32_t>> indices = ResolveIndices(req->block_indices(), **m);
    if (!indices.ok()) return indices.status();
    VersionKey key = VersionKey::FromProto(*scoped);
    uint64_t sent = 0;
    v1::BlockChunk chunk;
    for (uint32_t i : *indices) {
      absl::StatusOr<BufferPtr> b = store_->GetBlock(key, i);
      if (!b.ok()) return b.status();
      const uint64_t size = (*b)->size();
      for (uint64_t off = 0; off < size; off += options_.chunk_bytes) {
        uint64_t n = std::min<uint64_t>(options_.chunk_bytes, size - off);
        chunk.set_index(i);
        chunk.set_offset(off);
        chunk.set_block_bytes(size);
        chunk.set_last(off + n == size);
        chunk.set_data((*b)->data() + off, n);
        if (!writer->Write(chunk)) {
          return absl::CancelledError("client went away during ReadBlocks");
        }
        sent += n;
      }
      if (ctx->IsCancelled()) return absl::CancelledError("ReadBlocks cancelled");
    }
    if (metrics_ != nullptr) metrics_->Transfer("grpc", "out", sent);
    return absl::OkStatus();
  });
}

grpc::Status KvStoreService::GrantRead(grpc::ServerContext* ctx, const v1::GrantReadRequest* req,
                                       v1::GrantReadResponse* resp) {
  return Handle(ctx, "GrantRead", [&](const Caller& caller) -> absl::Status {
    absl::StatusOr<v1::ConversationKey> scoped = CheckKey(*req, req->has_key(), req->key(), caller);
    if (!scoped.ok()) return scoped.status();
    if (transport_ == nullptr) {
      return absl::FailedPreconditionError(
          "this server has no UCX data plane; read with ReadBlocks or Get");
    }
    absl::Duration lease = absl::Seconds(req->lease_seconds());
    if (lease > options_.max_read_grant) {
      return absl::InvalidArgumentError(absl::StrCat(
          "lease_seconds: above the maximum of ", absl::FormatDuration(options_.max_read_grant)));
    }
    if (lease == absl::ZeroDuration()) lease = options_.default_read_grant;
    absl::StatusOr<std::shared_ptr<const v1::Manifest>> m = store_->Lookup(*scoped, req->latest());
    if (!m.ok()) return m.status();
    absl::StatusOr<std::vector<uint32_t>> indices = ResolveIndices(req->block_indices(), **m);
    if (!indices.ok()) return indices.status();
    VersionKey key = VersionKey::FromProto((*m)->key());
    Grant grant;
    grant.tenant = caller.tenant;
    grant.expires = absl::Now() + lease;
    uint64_t total = 0;
    std::vector<BlockMemory> memory;
    std::vector<v1::TransferTarget*> targets;
    for (uint32_t i : *indices) {
      absl::StatusOr<BufferPtr> b = store_->GetBlock(key, i);
      if (!b.ok()) return b.status();
      v1::TransferTarget* t = resp->add_targets();
      t->set_index(i);
      t->set_size_bytes((*b)->size());
      targets.push_back(t);
      total += (*b)->size();
      // The transport only reads this memory (clients get read grants).
      memory.push_back(BlockMemory{const_cast<char*>((*b)->data()), (*b)->size(), (*b)->region(),
                                   (*b)->region_offset(), *b});
    }
    if (absl::Status s = DescribeBlocks(memory, grant.expires, &grant, targets); !s.ok()) {
      return s;
    }
    *resp->mutable_manifest() = **m;
    resp->set_expires_unix_micros(UnixMicros(grant.expires));
    {
      absl::MutexLock lock(&mu_);
      uint64_t id = next_grant_id_++;
      resp->set_grant_id(id);
      read_grants_[id] = std::move(grant);
    }
    if (metrics_ != nullptr) metrics_->Transfer("ucx", "out", total);
    return absl::OkStatus();
  });
}

grpc::Status KvStoreService::ReleaseRead(grpc::ServerContext* ctx,
                                         const v1::ReleaseReadRequest* req,
                                         v1::ReleaseReadResponse*) {
  return Handle(ctx, "ReleaseRead", [&](const Caller& caller) -> absl::Status {
    KRUL_RETURN_IF_ERROR(CheckKnownFields(*req));
    Grant g;  // Revoked after the lock is released.
    absl::MutexLock lock(&mu_);
    auto it = read_grants_.find(req->grant_id());
    if (it == read_grants_.end() || (!caller.trusted && it->second.tenant != caller.tenant)) {
      return absl::NotFoundError(absl::StrCat("read grant ", req->grant_id(), " is not active"));
    }
    g = std::move(it->second);
    read_grants_.erase(it);
    return absl::OkStatus();
  });
}

grpc::Status KvStoreService::Delete(grpc::ServerContext* ctx, const v1::DeleteRequest* req,
                                    v1::DeleteResponse* resp) {
  return Handle(ctx, "Delete", [&](const Caller& caller) -> absl::Status {
    absl::StatusOr<v1::ConversationKey> key = CheckKey(*req, req->has_key(), req->key(), caller);
    if (!key.ok()) return key.status();
    absl::StatusOr<int> n = store_->Delete(*key, req->all_turns());
    if (!n.ok()) return n.status();
    resp->set_deleted_versions(static_cast<uint32_t>(*n));
    return absl::OkStatus();
  });
}

grpc::Status KvStoreService::Pin(grpc::ServerContext* ctx, const v1::PinRequest* req,
                                 v1::PinResponse* resp) {
  return Handle(ctx, "Pin", [&](const Caller& caller) -> absl::Status {
    absl::StatusOr<v1::ConversationKey> key = CheckKey(*req, req->has_key(), req->key(), caller);
    if (!key.ok()) return key.status();
    absl::StatusOr<krul::kvstore::Lease> lease =
        store_->Pin(*key, absl::Seconds(req->lease_seconds()));
    if (!lease.ok()) return lease.status();
    resp->set_lease_id(lease->lease_id);
    resp->set_expires_unix_micros(UnixMicros(lease->expires));
    return absl::OkStatus();
  });
}

grpc::Status KvStoreService::Unpin(grpc::ServerContext* ctx, const v1::UnpinRequest* req,
                                   v1::UnpinResponse*) {
  return Handle(ctx, "Unpin", [&](const Caller& caller) -> absl::Status {
    KRUL_RETURN_IF_ERROR(CheckKnownFields(*req));
    if (!caller.trusted) {
      KRUL_RETURN_IF_ERROR(store_->CheckLeaseTenant(req->lease_id(), caller.tenant));
    }
    return store_->Unpin(req->lease_id());
  });
}

grpc::Status KvStoreService::Stats(grpc::ServerContext* ctx, const v1::StatsRequest* req,
                                   v1::StatsResponse* resp) {
  // Store-wide figures, no tenant's data: any authenticated caller.
  return Handle(ctx, "Stats", [&](const Caller&) -> absl::Status {
    KRUL_RETURN_IF_ERROR(CheckKnownFields(*req));
    StoreStats s = store_->Stats();
    v1::TierStats* dram = resp->add_tiers();
    dram->set_tier("dram");
    dram->set_bytes(s.dram_bytes);
    dram->set_objects(s.dram_objects);
    v1::TierStats* disk = resp->add_tiers();
    disk->set_tier("rocksdb");
    disk->set_bytes(s.rocksdb_bytes);
    disk->set_objects(s.rocksdb_objects);
    resp->set_capacity_bytes(s.dram_capacity_bytes);
    resp->set_staging_bytes(s.staging_bytes);
    resp->set_open_puts(s.open_puts);
    resp->set_active_leases(s.active_leases);
    resp->set_evictions(s.evictions);
    resp->set_checksum_failures(s.checksum_failures);
    return absl::OkStatus();
  });
}

grpc::Status KvStoreService::Health(grpc::ServerContext*, const v1::HealthRequest* req,
                                    v1::HealthResponse* resp) {
  // Unauthenticated, so probes need no token; it reveals nothing stored.
  return Handle(nullptr, "Health", [&](const Caller&) -> absl::Status {
    KRUL_RETURN_IF_ERROR(CheckKnownFields(*req));
    absl::MutexLock lock(&mu_);
    resp->set_status(draining_ ? v1::HealthResponse::DRAINING : v1::HealthResponse::SERVING);
    resp->set_version("krul-kvstore 0.1.0");
    return absl::OkStatus();
  });
}

grpc::Status KvStoreService::ExchangeEndpoints(grpc::ServerContext* ctx,
                                               const v1::ExchangeEndpointsRequest* req,
                                               v1::ExchangeEndpointsResponse* resp) {
  return Handle(ctx, "ExchangeEndpoints", [&](const Caller&) -> absl::Status {
    KRUL_RETURN_IF_ERROR(CheckKnownFields(*req));
    if (req->client_worker_address().size() > 64 * 1024) {
      return absl::InvalidArgumentError("client_worker_address: longer than 64 KiB");
    }
    resp->set_max_inline_bytes(options_.max_inline_bytes);
    resp->set_max_chunk_bytes(options_.chunk_bytes);
    bool wants_grpc = req->transports().empty();
    for (const std::string& t : req->transports()) {
      if (t == "ucx" && transport_ != nullptr) {
        resp->set_transport("ucx");
        resp->set_server_worker_address(transport_->address());
        return absl::OkStatus();
      }
      wants_grpc |= t == "grpc";
    }
    if (!wants_grpc) {
      return absl::FailedPreconditionError(absl::StrCat(
          "transports: none of [", absl::StrJoin(req->transports(), ", "),
          "] is offered; this server offers grpc", transport_ != nullptr ? ", ucx" : ""));
    }
    resp->set_transport("grpc");
    return absl::OkStatus();
  });
}

}  // namespace krul::kvstore
