#include "krul/kvclient/kvstore_client.h"

#include <grpcpp/grpcpp.h>
#include <xxhash.h>

#include <algorithm>
#include <random>
#include <thread>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "channel_watcher.h"
#include "krul/base/status_macros.h"
#include "krul/kvformat/manifest.h"
#include "krul/rpc/bearer_token.h"
#include "krul/rpc/grpc_status.h"

namespace krul {
namespace {

absl::Status Annotate(const absl::Status& s, const std::string& address) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(address, ": ", s.message()));
}

std::chrono::system_clock::time_point ToChrono(absl::Time t) { return absl::ToChronoTime(t); }

// The gRPC streaming data plane (WriteBlocks / ReadBlocks).
class GrpcBlockTransport final : public BlockTransport {
 public:
  explicit GrpcBlockTransport(uint64_t chunk_bytes) : chunk_bytes_(chunk_bytes) {}

  std::string_view name() const override { return "grpc"; }

  absl::Status Write(v1::KvStore::StubInterface& stub, const std::string& address,
                     const v1::BeginPutResponse& reservation,
                     std::span<const std::string_view> blocks, absl::Time deadline) override {
    grpc::ClientContext ctx;
    ctx.set_deadline(ToChrono(deadline));
    v1::WriteBlocksResponse resp;
    std::unique_ptr<grpc::ClientWriterInterface<v1::BlockChunk>> writer =
        stub.WriteBlocks(&ctx, &resp);
    v1::BlockChunk chunk;
    chunk.set_put_id(reservation.put_id());
    bool open = true;
    for (size_t i = 0; i < blocks.size() && open; ++i) {
      const std::string_view b = blocks[i];
      for (uint64_t off = 0; off < b.size() && open; off += chunk_bytes_) {
        uint64_t n = std::min<uint64_t>(chunk_bytes_, b.size() - off);
        chunk.set_index(static_cast<uint32_t>(i));
        chunk.set_offset(off);
        chunk.set_data(b.data() + off, n);
        open = writer->Write(chunk);
      }
    }
    if (open) writer->WritesDone();
    // Finish reports the server's verdict, also when a Write failed early.
    return FromGrpcStatus(writer->Finish());
  }

  absl::Status Read(v1::KvStore::StubInterface& stub, const std::string& address,
                    const v1::Manifest& manifest, std::span<const uint32_t> indices,
                    const RawBlockCallback& on_block, absl::Time deadline) override {
    grpc::ClientContext ctx;
    ctx.set_deadline(ToChrono(deadline));
    v1::ReadBlocksRequest req;
    *req.mutable_key() = manifest.key();
    for (uint32_t i : indices) req.add_block_indices(i);
    std::unique_ptr<grpc::ClientReaderInterface<v1::BlockChunk>> reader =
        stub.ReadBlocks(&ctx, req);
    v1::BlockChunk chunk;
    std::string buf;
    size_t pos = 0;
    absl::Status stop;
    while (stop.ok() && reader->Read(&chunk)) {
      if (pos >= indices.size() || chunk.index() != indices[pos]) {
        stop = absl::DataLossError("ReadBlocks: chunk of an unexpected block");
        break;
      }
      const uint64_t expected = manifest.blocks(static_cast<int>(indices[pos])).encoded_bytes();
      if (chunk.block_bytes() != expected || chunk.offset() != buf.size() ||
          chunk.data().size() > expected - buf.size()) {
        stop = absl::DataLossError(absl::StrCat("ReadBlocks: block ", chunk.index(),
                                                " arrives with a size or offset "
                                                "other than the manifest's"));
        break;
      }
      if (!chunk.last()) {
        if (buf.empty()) buf.reserve(expected);
        buf.append(chunk.data());
        continue;
      }
      std::string_view whole;
      if (buf.empty()) {
        whole = chunk.data();  // Single-chunk block: no copy.
      } else {
        buf.append(chunk.data());
        whole = buf;
      }
      if (whole.size() != expected) {
        stop = absl::DataLossError(absl::StrCat("ReadBlocks: block ", chunk.index(), " has ",
                                                whole.size(), " bytes, manifest says ", expected));
        break;
      }
      stop = on_block(indices[pos], whole, std::nullopt);
      buf.clear();
      ++pos;
    }
    if (!stop.ok()) {
      ctx.TryCancel();
      reader->Finish().ok();  // Drain; the cancellation status is expected.
      return stop;
    }
    absl::Status s = FromGrpcStatus(reader->Finish());
    if (!s.ok()) return s;
    if (pos != indices.size()) {
      return absl::DataLossError(
          absl::StrCat("ReadBlocks: stream ended after ", pos, " of ", indices.size(), " blocks"));
    }
    return absl::OkStatus();
  }

 private:
  const uint64_t chunk_bytes_;
};

bool RetryableForReads(absl::StatusCode c) {
  return c == absl::StatusCode::kUnavailable || c == absl::StatusCode::kDeadlineExceeded ||
         c == absl::StatusCode::kAborted || c == absl::StatusCode::kDataLoss;
}

bool RetryableForControl(absl::StatusCode c) {
  return c == absl::StatusCode::kUnavailable || c == absl::StatusCode::kDeadlineExceeded ||
         c == absl::StatusCode::kAborted;
}

// Whether another replica might succeed where this one failed.
bool TryNextReplica(absl::StatusCode c) {
  return RetryableForReads(c) || c == absl::StatusCode::kNotFound ||
         c == absl::StatusCode::kInternal;
}

}  // namespace

std::unique_ptr<BlockTransport> NewGrpcBlockTransport(uint64_t chunk_bytes) {
  return std::make_unique<GrpcBlockTransport>(chunk_bytes);
}

absl::Status KvStoreClientOptions::Validate() const {
  if (addresses.empty()) return absl::InvalidArgumentError("addresses: empty");
  absl::flat_hash_set<std::string> seen;
  for (const std::string& a : addresses) {
    if (a.empty()) return absl::InvalidArgumentError("addresses: empty address");
    if (!seen.insert(a).second) {
      return absl::InvalidArgumentError(absl::StrCat("addresses: '", a, "' listed twice"));
    }
  }
  if (replication < 1 || replication > static_cast<int>(addresses.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("replication: ", replication, " not in [1, ", addresses.size(), "]"));
  }
  if (min_write_replicas < 0 || min_write_replicas > replication) {
    return absl::InvalidArgumentError(
        absl::StrCat("min_write_replicas: ", min_write_replicas, " not in [0, replication]"));
  }
  if (rpc_timeout <= absl::ZeroDuration()) return absl::InvalidArgumentError("rpc_timeout: <= 0");
  if (transfer_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("transfer_timeout: <= 0");
  }
  if (max_attempts < 1) return absl::InvalidArgumentError("max_attempts: < 1");
  if (initial_backoff <= absl::ZeroDuration() || max_backoff < initial_backoff) {
    return absl::InvalidArgumentError("initial_backoff/max_backoff: need 0 < initial <= max");
  }
  if (inline_put_bytes > (uint64_t{64} << 20)) {
    return absl::InvalidArgumentError("inline_put_bytes: above 64 MiB");
  }
  if (reconnect_backoff_initial <= absl::ZeroDuration() ||
      reconnect_backoff_max < reconnect_backoff_initial) {
    return absl::InvalidArgumentError("reconnect_backoff_initial/max: need 0 < initial <= max");
  }
  if (connect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("connect_timeout: <= 0");
  }
  if (!bearer_token.empty()) {
    if (absl::Status s = rpc::ValidateToken(bearer_token); !s.ok()) return s;
  }
  if (tls.enabled) {
    // Reads the files once, so a missing certificate is an error now.
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds =
        rpc::MakeChannelCredentials(tls, nullptr);
    if (!creds.ok()) return creds.status();
  } else {
    for (const std::string& a : addresses) {
      absl::StatusOr<std::string> host = rpc::HostOfAddress(a);
      if (!host.ok()) return host.status();
      absl::StatusOr<std::string> ok =
          rpc::CheckPlaintext(absl::StrCat("kvstore connection to ", a), *host, allow_insecure);
      if (!ok.ok()) return ok.status();
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<KvStoreClient>> KvStoreClient::Create(KvStoreClientOptions options) {
  KRUL_RETURN_IF_ERROR(options.Validate());
  if (options.block_transport == nullptr) options.block_transport = NewGrpcBlockTransport();
  return std::unique_ptr<KvStoreClient>(new KvStoreClient(std::move(options)));
}

KvStoreClient::KvStoreClient(KvStoreClientOptions options)
    : options_(std::move(options)),
      watcher_(std::make_unique<kvclient_internal::ChannelWatcher>()) {}

KvStoreClient::~KvStoreClient() = default;

v1::KvStore::StubInterface& KvStoreClient::StubFor(const std::string& address) {
  absl::MutexLock lock(&mu_);
  auto it = stubs_.find(address);
  if (it != stubs_.end()) return *it->second;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(256 << 20);
  args.SetMaxSendMessageSize(-1);  // The server enforces its own limit.
  // A restarted or replaced shard should be used again soon after it is
  // back: gRPC would wait up to 120 s between attempts. (MIN_RECONNECT is
  // gRPC's minimum connect timeout, not a backoff.)
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
              static_cast<int>(absl::ToInt64Milliseconds(options_.reconnect_backoff_initial)));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
              static_cast<int>(absl::ToInt64Milliseconds(options_.reconnect_backoff_max)));
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS,
              static_cast<int>(absl::ToInt64Milliseconds(options_.connect_timeout)));
  // Validate() built these once already, so only a file that vanished since
  // fails here; then calls on this shard fail UNAVAILABLE (insecure creds
  // against a TLS server) and the error is logged by the caller's fallback.
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds =
      rpc::MakeChannelCredentials(options_.tls, &args);
  std::shared_ptr<grpc::Channel> channel =
      rpc::CreateChannelWithToken(address, creds.ok() ? *creds : grpc::InsecureChannelCredentials(),
                                  args, options_.bearer_token);
  if (options_.keep_connected) watcher_->Watch(channel);
  auto stub = v1::KvStore::NewStub(channel);
  v1::KvStore::StubInterface& ref = *stub;
  stubs_[address] = std::move(stub);
  return ref;
}

std::vector<std::string> KvStoreClient::RankShards(std::string_view tenant,
                                                   std::string_view conversation_id) const {
  // Rendezvous (highest random weight) hashing: each shard scores the key
  // with a hash seeded by the shard's address; the ranking of the remaining
  // shards does not change when one joins or leaves.
  std::string key;
  key.reserve(tenant.size() + 1 + conversation_id.size());
  key.append(tenant);
  key.push_back('\0');
  key.append(conversation_id);
  std::vector<std::pair<uint64_t, const std::string*>> scored;
  scored.reserve(options_.addresses.size());
  for (const std::string& a : options_.addresses) {
    uint64_t seed = XXH3_64bits(a.data(), a.size());
    scored.emplace_back(XXH3_64bits_withSeed(key.data(), key.size(), seed), &a);
  }
  std::sort(scored.begin(), scored.end(), [](const auto& x, const auto& y) {
    return x.first != y.first ? x.first > y.first : *x.second < *y.second;
  });
  std::vector<std::string> out;
  out.reserve(scored.size());
  for (const auto& [score, a] : scored) out.push_back(*a);
  return out;
}

std::vector<std::string> KvStoreClient::ReplicasFor(std::string_view tenant,
                                                    std::string_view conversation_id) const {
  std::vector<std::string> ranked = RankShards(tenant, conversation_id);
  ranked.resize(options_.replication);
  return ranked;
}

absl::Status KvStoreClient::WithRetries(const std::function<absl::Status()>& attempt) {
  return WithRetriesIf(attempt, RetryableForControl);
}

absl::Status KvStoreClient::WithRetriesIf(const std::function<absl::Status()>& attempt,
                                          bool (*retryable)(absl::StatusCode)) {
  thread_local std::mt19937 rng(std::random_device{}());
  absl::Duration backoff = options_.initial_backoff;
  absl::Status s;
  for (int i = 1; i <= options_.max_attempts; ++i) {
    s = attempt();
    if (s.ok() || !retryable(s.code()) || i == options_.max_attempts) return s;
    double jitter = std::uniform_real_distribution<double>(0.75, 1.25)(rng);
    absl::SleepFor(backoff * jitter);
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
  return s;
}

absl::StatusOr<v1::Manifest> KvStoreClient::PutOne(const std::string& address,
                                                   const v1::Manifest& manifest,
                                                   std::span<const std::string_view> blocks,
                                                   uint64_t total_bytes, absl::Duration ttl) {
  v1::KvStore::StubInterface& stub = StubFor(address);
  const uint32_t ttl_seconds =
      static_cast<uint32_t>(std::clamp<int64_t>(absl::ToInt64Seconds(ttl), 0, UINT32_MAX));
  v1::Manifest committed;
  absl::Status s;
  if (total_bytes <= options_.inline_put_bytes) {
    v1::PutRequest req;
    *req.mutable_manifest() = manifest;
    for (std::string_view b : blocks) req.add_blocks(b.data(), b.size());
    req.set_ttl_seconds(ttl_seconds);
    // DATA_LOSS means the bytes were damaged on the way: send them again.
    s = WithRetriesIf(
        [&] {
          grpc::ClientContext ctx;
          ctx.set_deadline(ToChrono(absl::Now() + options_.rpc_timeout));
          v1::PutResponse resp;
          absl::Status st = FromGrpcStatus(stub.Put(&ctx, req, &resp));
          if (st.ok()) committed = std::move(*resp.mutable_manifest());
          return st;
        },
        RetryableForReads);
    if (!s.ok()) return Annotate(s, address);
    return committed;
  }
  BlockTransport& bt = *options_.block_transport;
  s = WithRetriesIf(
      [&]() -> absl::Status {
        v1::BeginPutRequest begin;
        *begin.mutable_key() = manifest.key();
        for (std::string_view b : blocks) begin.add_block_sizes(b.size());
        begin.set_ttl_seconds(ttl_seconds);
        begin.set_transport(std::string(bt.name()));
        v1::BeginPutResponse reservation;
        {
          grpc::ClientContext ctx;
          ctx.set_deadline(ToChrono(absl::Now() + options_.rpc_timeout));
          KRUL_RETURN_IF_ERROR(FromGrpcStatus(stub.BeginPut(&ctx, begin, &reservation)));
        }
        absl::Status st =
            bt.Write(stub, address, reservation, blocks, absl::Now() + options_.transfer_timeout);
        if (st.ok()) {
          grpc::ClientContext ctx;
          ctx.set_deadline(ToChrono(absl::Now() + options_.rpc_timeout));
          v1::CommitPutRequest commit;
          commit.set_put_id(reservation.put_id());
          *commit.mutable_manifest() = manifest;
          v1::CommitPutResponse resp;
          st = FromGrpcStatus(stub.CommitPut(&ctx, commit, &resp));
          if (st.ok()) committed = std::move(*resp.mutable_manifest());
          return st;  // A failed commit closes the reservation server-side.
        }
        // Free the reservation now rather than at its deadline.
        grpc::ClientContext ctx;
        ctx.set_deadline(ToChrono(absl::Now() + options_.rpc_timeout));
        v1::AbortPutRequest abort;
        abort.set_put_id(reservation.put_id());
        v1::AbortPutResponse ignored;
        stub.AbortPut(&ctx, abort, &ignored);
        return st;
      },
      RetryableForReads);
  if (!s.ok()) return Annotate(s, address);
  return committed;
}

absl::StatusOr<v1::Manifest> KvStoreClient::Put(v1::Manifest manifest,
                                                std::span<const std::string_view> blocks,
                                                absl::Duration ttl) {
  if (manifest.blocks_size() == 0) {
    for (size_t i = 0; i < blocks.size(); ++i) {
      absl::StatusOr<v1::BlockRef> ref = MakeBlockRef(static_cast<uint32_t>(i), blocks[i]);
      if (!ref.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("blocks[", i, "]: not a valid encoded block: ", ref.status().message()));
      }
      *manifest.add_blocks() = *std::move(ref);
    }
  } else if (static_cast<size_t>(manifest.blocks_size()) != blocks.size()) {
    return absl::InvalidArgumentError(absl::StrCat("manifest.blocks lists ", manifest.blocks_size(),
                                                   " blocks, ", blocks.size(), " given"));
  }
  KRUL_RETURN_IF_ERROR(ValidateManifest(manifest));
  if (ttl < absl::ZeroDuration()) return absl::InvalidArgumentError("ttl: negative");
  const uint64_t total = ManifestBlockBytes(manifest);
  std::vector<std::string> replicas =
      ReplicasFor(manifest.key().tenant(), manifest.key().conversation_id());
  std::vector<absl::StatusOr<v1::Manifest>> results(replicas.size(),
                                                    absl::UnknownError("not attempted"));
  if (replicas.size() == 1) {
    results[0] = PutOne(replicas[0], manifest, blocks, total, ttl);
  } else {
    std::vector<std::thread> threads;
    for (size_t r = 0; r < replicas.size(); ++r) {
      threads.emplace_back(
          [&, r] { results[r] = PutOne(replicas[r], manifest, blocks, total, ttl); });
    }
    for (std::thread& t : threads) t.join();
  }
  const int needed =
      options_.min_write_replicas == 0 ? options_.replication : options_.min_write_replicas;
  int ok = 0;
  const v1::Manifest* first_ok = nullptr;
  absl::Status first_error;
  for (auto& r : results) {
    if (r.ok()) {
      ++ok;
      if (first_ok == nullptr) first_ok = &*r;
    } else if (first_error.ok()) {
      first_error = r.status();
    }
  }
  if (ok >= needed) return *first_ok;
  return absl::Status(first_error.code(),
                      absl::StrCat("put committed on ", ok, " of ", replicas.size(), " replicas (",
                                   needed, " needed): ", first_error.message()));
}

absl::StatusOr<v1::Manifest> KvStoreClient::Lookup(const v1::ConversationKey& key, bool latest) {
  KRUL_RETURN_IF_ERROR(ValidateConversationKey(key));
  v1::LookupRequest req;
  *req.mutable_key() = key;
  req.set_latest(latest);
  absl::Status last;
  for (const std::string& address : ReplicasFor(key.tenant(), key.conversation_id())) {
    v1::KvStore::StubInterface& stub = StubFor(address);
    v1::LookupResponse resp;
    absl::Status s = WithRetries([&] {
      grpc::ClientContext ctx;
      ctx.set_deadline(ToChrono(absl::Now() + options_.rpc_timeout));
      return FromGrpcStatus(stub.Lookup(&ctx, req, &resp));
    });
    if (s.ok()) return std::move(*resp.mutable_manifest());
    if (!TryNextReplica(s.code())) return Annotate(s, address);
    // Prefer reporting an unreachable replica over NOT_FOUND: the version
    // may be on the replica that did not answer.
    if (s.code() == absl::StatusCode::kNotFound) {
      if (last.ok()) last = Annotate(s, address);
    } else {
      last = Annotate(s, address);
    }
  }
  return last;
}

absl::Status KvStoreClient::Read(const v1::Manifest& manifest, std::span<const uint32_t> indices,
                                 const BlockCallback& on_block) {
  KRUL_RETURN_IF_ERROR(ValidateManifest(manifest));
  std::vector<uint32_t> wanted;
  if (indices.empty()) {
    for (int i = 0; i < manifest.blocks_size(); ++i) wanted.push_back(static_cast<uint32_t>(i));
  } else {
    for (uint32_t i : indices) {
      if (i >= static_cast<uint32_t>(manifest.blocks_size())) {
        return absl::InvalidArgumentError(absl::StrCat("indices: ", i, " but the manifest has ",
                                                       manifest.blocks_size(), " blocks"));
      }
      wanted.push_back(i);
    }
  }
  size_t delivered = 0;
  absl::Status caller_error;
  absl::Status last = absl::UnavailableError("no replica tried");
  bool saw_data_loss = false;
  absl::Status data_loss;
  const RawBlockCallback verify = [&](uint32_t index, std::string_view encoded,
                                      std::optional<uint64_t> payload_xxh3) -> absl::Status {
    absl::StatusOr<DecodedBlock> block =
        VerifyBlock(manifest.blocks(static_cast<int>(index)), encoded, payload_xxh3);
    if (!block.ok()) return block.status();
    absl::Status s = on_block(index, encoded, *block);
    if (!s.ok()) {
      caller_error = s;
      return s;
    }
    ++delivered;
    return absl::OkStatus();
  };
  BlockTransport& bt = *options_.block_transport;
  for (const std::string& address :
       ReplicasFor(manifest.key().tenant(), manifest.key().conversation_id())) {
    v1::KvStore::StubInterface& stub = StubFor(address);
    absl::Status s = WithRetriesIf(
        [&] {
          std::span<const uint32_t> rest(wanted.data() + delivered, wanted.size() - delivered);
          if (rest.empty()) return absl::OkStatus();
          return bt.Read(stub, address, manifest, rest, verify,
                         absl::Now() + options_.transfer_timeout);
        },
        RetryableForReads);
    if (!caller_error.ok()) return caller_error;
    if (s.ok()) return absl::OkStatus();
    if (s.code() == absl::StatusCode::kDataLoss && !saw_data_loss) {
      saw_data_loss = true;
      data_loss = Annotate(s, address);
    }
    last = Annotate(s, address);
    if (!TryNextReplica(s.code())) return last;
  }
  return saw_data_loss ? data_loss : last;
}

absl::StatusOr<std::vector<std::string>> KvStoreClient::ReadAll(const v1::Manifest& manifest) {
  std::vector<std::string> out;
  out.reserve(manifest.blocks_size());
  absl::Status s = Read(manifest, {}, [&](uint32_t, std::string_view encoded, const DecodedBlock&) {
    out.emplace_back(encoded);
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<int> KvStoreClient::Delete(const v1::ConversationKey& key, bool all_turns) {
  KRUL_RETURN_IF_ERROR(ValidateConversationKey(key));
  v1::DeleteRequest req;
  *req.mutable_key() = key;
  req.set_all_turns(all_turns);
  int most = 0;
  size_t not_found = 0;
  absl::Status unreachable;
  std::vector<std::string> replicas = ReplicasFor(key.tenant(), key.conversation_id());
  for (const std::string& address : replicas) {
    v1::KvStore::StubInterface& stub = StubFor(address);
    v1::DeleteResponse resp;
    absl::Status s = WithRetries([&] {
      grpc::ClientContext ctx;
      ctx.set_deadline(ToChrono(absl::Now() + options_.rpc_timeout));
      return FromGrpcStatus(stub.Delete(&ctx, req, &resp));
    });
    if (s.ok()) {
      most = std::max(most, static_cast<int>(resp.deleted_versions()));
    } else if (s.code() == absl::StatusCode::kNotFound) {
      ++not_found;
    } else if (RetryableForControl(s.code())) {
      unreachable = Annotate(s, address);
    } else {
      return Annotate(s, address);
    }
  }
  if (!unreachable.ok()) return unreachable;
  if (not_found == replicas.size()) {
    return absl::NotFoundError(
        absl::StrCat("no replica has ", key.tenant(), "/", key.conversation_id(), "@", key.turn()));
  }
  return most;
}

absl::StatusOr<PinHandle> KvStoreClient::Pin(const v1::ConversationKey& key, absl::Duration lease) {
  KRUL_RETURN_IF_ERROR(ValidateConversationKey(key));
  v1::PinRequest req;
  *req.mutable_key() = key;
  req.set_lease_seconds(static_cast<uint32_t>(std::max<int64_t>(0, absl::ToInt64Seconds(lease))));
  absl::Status last;
  for (const std::string& address : ReplicasFor(key.tenant(), key.conversation_id())) {
    v1::KvStore::StubInterface& stub = StubFor(address);
    v1::PinResponse resp;
    absl::Status s = WithRetries([&] {
      grpc::ClientContext ctx;
      ctx.set_deadline(ToChrono(absl::Now() + options_.rpc_timeout));
      return FromGrpcStatus(stub.Pin(&ctx, req, &resp));
    });
    if (s.ok()) {
      return PinHandle{address, resp.lease_id(), absl::FromUnixMicros(resp.expires_unix_micros())};
    }
    last = Annotate(s, address);
    if (!TryNextReplica(s.code())) return last;
  }
  return last;
}

absl::Status KvStoreClient::Unpin(const PinHandle& pin) {
  v1::KvStore::StubInterface& stub = StubFor(pin.address);
  v1::UnpinRequest req;
  req.set_lease_id(pin.lease_id);
  return Annotate(WithRetries([&] {
                    grpc::ClientContext ctx;
                    ctx.set_deadline(ToChrono(absl::Now() + options_.rpc_timeout));
                    v1::UnpinResponse resp;
                    return FromGrpcStatus(stub.Unpin(&ctx, req, &resp));
                  }),
                  pin.address);
}

absl::StatusOr<v1::StatsResponse> KvStoreClient::Stats(const std::string& address) {
  v1::KvStore::StubInterface& stub = StubFor(address);
  v1::StatsResponse resp;
  absl::Status s = WithRetries([&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(ToChrono(absl::Now() + options_.rpc_timeout));
    return FromGrpcStatus(stub.Stats(&ctx, v1::StatsRequest(), &resp));
  });
  if (!s.ok()) return Annotate(s, address);
  return resp;
}

absl::StatusOr<v1::HealthResponse> KvStoreClient::Health(const std::string& address) {
  v1::KvStore::StubInterface& stub = StubFor(address);
  v1::HealthResponse resp;
  absl::Status s = WithRetries([&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(ToChrono(absl::Now() + options_.rpc_timeout));
    return FromGrpcStatus(stub.Health(&ctx, v1::HealthRequest(), &resp));
  });
  if (!s.ok()) return Annotate(s, address);
  return resp;
}

}  // namespace krul
