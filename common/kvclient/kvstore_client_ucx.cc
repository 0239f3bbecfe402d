// The UCX data plane of KvStoreClient (NewUcxBlockTransport): blocks move
// one-sidedly between client memory and the store's memory through a
// krul::Transport; gRPC only carries the grants.
//
//  Put: BeginPut(transport "ucx") returns one descriptor per staging block;
//       the client registers its block bytes and posts one RMA write per
//       block, waits for all (remote completion), then commits.
//  Get: GrantRead returns one descriptor per committed block; the client
//       posts one read per block into a registered scratch region, hashes
//       each block's payload as it lands (over shared memory piece by piece
//       right behind the copy, while the bytes are in cache) and hands block
//       i to the caller as soon as its read completes (per-layer
//       pipelining), then releases the grant.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "krul/base/status_macros.h"
#include "krul/kvclient/kvstore_client.h"
#include "krul/kvformat/kv_block.h"
#include "krul/rpc/grpc_status.h"
#include "krul/transport/transport.h"

namespace krul {
namespace {

absl::Duration Until(absl::Time deadline) {
  return std::max(absl::ZeroDuration(), deadline - absl::Now());
}

// Pieces in which a landing block is hashed: small enough that a piece the
// copy just wrote is still in L2 when the hash reads it.
constexpr uint64_t kHashPieceBytes = 256 << 10;

// The checksum of one block's payload (the bytes after its header), fed by
// the transfer's landing observer with the block's bytes in order.
class PayloadHash {
 public:
  void Add(uint64_t offset, std::span<const uint8_t> bytes) {
    if (offset + bytes.size() <= kBlockHeaderBytes) return;
    const uint64_t skip = offset < kBlockHeaderBytes ? kBlockHeaderBytes - offset : 0;
    stream_.Update(
        std::string_view(reinterpret_cast<const char*>(bytes.data()) + skip, bytes.size() - skip));
  }
  uint64_t Digest() const { return stream_.Digest(); }

 private:
  BlockChecksumStream stream_;
};

// The grants of one request, imported once each: the store gives adjacent
// blocks one descriptor. Importing is cheap after the first request: the
// transport keeps the store's regions imported per endpoint (UCX remote key
// unpacked, shared memory mapped; Transport::stats), so a per-request grant
// only adds its range and expiry, which every transfer checks.
class RequestImports {
 public:
  explicit RequestImports(Endpoint& ep) : ep_(ep) {}

  absl::StatusOr<RemoteRegion*> Import(const std::string& descriptor) {
    auto it = imported_.find(descriptor);
    if (it != imported_.end()) return it->second.get();
    absl::StatusOr<std::unique_ptr<RemoteRegion>> r = ep_.ImportRegion(descriptor);
    if (!r.ok()) return r.status();
    RemoteRegion* raw = r->get();
    imported_.emplace(descriptor, *std::move(r));
    return raw;
  }

 private:
  Endpoint& ep_;
  absl::flat_hash_map<std::string, std::unique_ptr<RemoteRegion>> imported_;
};

// Blocks of one Get, back to back in the scratch region.
struct Blocks {
  std::vector<uint64_t> begin;  // scratch offset of each block
  uint64_t total = 0;
  std::vector<PayloadHash> hashes;

  uint64_t End(size_t k) const { return k + 1 < begin.size() ? begin[k + 1] : total; }
};

// Blocks [first, end) moving in one transfer; `next` is the block whose
// bytes land next (pieces of a transfer land in order).
struct Run {
  size_t first = 0;
  size_t end = 0;
  size_t next = 0;
};

// Feeds landed bytes at scratch offset `at` to the checksums of the blocks
// of `run` they belong to.
void HashLanded(Blocks& blocks, Run& run, uint64_t at, std::span<const uint8_t> bytes) {
  while (!bytes.empty() && run.next < run.end) {
    const uint64_t end = blocks.End(run.next);
    if (at >= end) {
      ++run.next;
      continue;
    }
    const size_t n = static_cast<size_t>(std::min<uint64_t>(bytes.size(), end - at));
    blocks.hashes[run.next].Add(at - blocks.begin[run.next], bytes.first(n));
    at += n;
    bytes = bytes.subspan(n);
  }
}

// Longest transfer that adjacent blocks are merged into, the UCX transport's
// largest single operation: fewer requests over TCP (each costs about four
// UCX messages; 64 KiB blocks went from 0.5 to 0.7 of a raw socket) and fewer
// handoffs over shared memory, while blocks still reach the caller one run
// (about a millisecond of copying) at a time.
constexpr uint64_t kRunBytes = 4 << 20;

class UcxBlockTransport final : public BlockTransport {
 public:
  explicit UcxBlockTransport(Transport* transport) : transport_(transport) {}

  std::string_view name() const override { return "ucx"; }

  absl::Status Write(v1::KvStore::StubInterface& stub, const std::string& address,
                     const v1::BeginPutResponse& reservation,
                     std::span<const std::string_view> blocks, absl::Time deadline) override {
    if (static_cast<size_t>(reservation.targets_size()) != blocks.size()) {
      return absl::InternalError("BeginPut returned a target count other than the block count");
    }
    absl::StatusOr<std::shared_ptr<Endpoint>> ep = EndpointFor(stub, address, deadline);
    if (!ep.ok()) return ep.status();
    // Everything a transfer refers to must outlive it: keep them together
    // and destroy transfers first.
    std::vector<std::unique_ptr<MemoryRegion>> locals;
    RequestImports remotes(**ep);
    std::vector<std::unique_ptr<Transfer>> transfers;
    absl::Status status;
    for (size_t i = 0; i < blocks.size() && status.ok(); ++i) {
      const v1::TransferTarget& target = reservation.targets(static_cast<int>(i));
      if (target.size_bytes() != blocks[i].size() || target.transport_descriptor().empty()) {
        status = absl::InternalError(absl::StrCat("target ", i, " does not fit block ", i));
        break;
      }
      // The transport only reads from this memory for a kWrite.
      absl::StatusOr<std::unique_ptr<MemoryRegion>> local =
          transport_->RegisterRegion(const_cast<char*>(blocks[i].data()), blocks[i].size());
      if (!local.ok()) {
        status = local.status();
        break;
      }
      absl::StatusOr<RemoteRegion*> remote = remotes.Import(target.transport_descriptor());
      if (!remote.ok()) {
        status = remote.status();
        break;
      }
      TransferSegment seg{0, target.remote_offset(), blocks[i].size()};
      absl::StatusOr<std::unique_ptr<Transfer>> t = transport_->PrepareTransfer(
          TransferOp::kWrite, **local, **remote, std::span<const TransferSegment>(&seg, 1));
      locals.push_back(*std::move(local));
      if (!t.ok()) {
        status = t.status();
        break;
      }
      status = (*t)->Post();
      transfers.push_back(*std::move(t));
    }
    for (auto& t : transfers) {
      absl::Status s = t->Wait(Until(deadline));
      if (status.ok()) status = s;
    }
    transfers.clear();
    if (status.code() == absl::StatusCode::kUnavailable) ForgetEndpoint(address);
    return status;
  }

  absl::Status Read(v1::KvStore::StubInterface& stub, const std::string& address,
                    const v1::Manifest& manifest, std::span<const uint32_t> indices,
                    const RawBlockCallback& on_block, absl::Time deadline) override {
    absl::StatusOr<std::shared_ptr<Endpoint>> ep = EndpointFor(stub, address, deadline);
    if (!ep.ok()) return ep.status();
    v1::GrantReadRequest req;
    *req.mutable_key() = manifest.key();
    for (uint32_t i : indices) req.add_block_indices(i);
    v1::GrantReadResponse grant;
    {
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(deadline));
      KRUL_RETURN_IF_ERROR(FromGrpcStatus(stub.GrantRead(&ctx, req, &grant)));
    }
    absl::Status status = ReadGranted(**ep, manifest, indices, grant, on_block, deadline);
    {
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
      v1::ReleaseReadRequest rel;
      rel.set_grant_id(grant.grant_id());
      v1::ReleaseReadResponse ignored;
      stub.ReleaseRead(&ctx, rel, &ignored);  // Best effort: grants also expire.
    }
    if (status.code() == absl::StatusCode::kUnavailable) ForgetEndpoint(address);
    return status;
  }

 private:
  absl::Status ReadGranted(Endpoint& ep, const v1::Manifest& manifest,
                           std::span<const uint32_t> indices, const v1::GrantReadResponse& grant,
                           const RawBlockCallback& on_block, absl::Time deadline) {
    if (static_cast<size_t>(grant.targets_size()) != indices.size()) {
      return absl::DataLossError("GrantRead returned a target count other than requested");
    }
    Blocks blocks;
    for (size_t k = 0; k < indices.size(); ++k) {
      const v1::TransferTarget& t = grant.targets(static_cast<int>(k));
      const uint64_t expected = manifest.blocks(static_cast<int>(indices[k])).encoded_bytes();
      if (t.index() != indices[k] || t.size_bytes() != expected) {
        return absl::DataLossError(absl::StrCat("GrantRead target ", k, " is not block ",
                                                indices[k], " as the manifest has it"));
      }
      blocks.begin.push_back(blocks.total);
      blocks.total += expected;
    }
    blocks.hashes.resize(indices.size());
    std::unique_ptr<MemoryRegion> scratch = TakeScratch(blocks.total);
    if (scratch == nullptr) {
      absl::StatusOr<std::unique_ptr<MemoryRegion>> r = transport_->AllocateRegion(blocks.total);
      if (!r.ok()) return r.status();
      scratch = *std::move(r);
    }
    // Runs of blocks that lie back to back in the store's memory under one
    // descriptor move as one transfer of up to kRunBytes (blocks [first, end)).
    // The n-th run holds at most 2^n blocks: over TCP a run is handed over
    // only when all of it has landed, so the first blocks asked for (a
    // restore's first layers) come in runs of their own and the caller can
    // start on them while the larger later runs are still in flight.
    std::vector<Run> runs;
    for (size_t k = 0; k < indices.size(); ++k) {
      const v1::TransferTarget& t = grant.targets(static_cast<int>(k));
      if (!runs.empty()) {
        Run& r = runs.back();
        const v1::TransferTarget& prev = grant.targets(static_cast<int>(k - 1));
        const size_t max_blocks = runs.size() > 20 ? SIZE_MAX : size_t{1} << (runs.size() - 1);
        if (t.transport_descriptor() == prev.transport_descriptor() &&
            t.remote_offset() == prev.remote_offset() + prev.size_bytes() &&
            blocks.End(k) - blocks.begin[r.first] <= kRunBytes && r.end - r.first < max_blocks) {
          r.end = k + 1;
          continue;
        }
      }
      runs.push_back(Run{k, k + 1, k});
    }
    RequestImports remotes(ep);
    std::vector<std::unique_ptr<Transfer>> transfers;  // One per run.
    absl::Status status;
    for (Run& run : runs) {
      const v1::TransferTarget& t = grant.targets(static_cast<int>(run.first));
      absl::StatusOr<RemoteRegion*> remote = remotes.Import(t.transport_descriptor());
      if (!remote.ok()) {
        status = remote.status();
        break;
      }
      const uint64_t local = blocks.begin[run.first];
      TransferSegment seg{local, t.remote_offset(), blocks.End(run.end - 1) - local};
      absl::StatusOr<std::unique_ptr<Transfer>> tr = transport_->PrepareTransfer(
          TransferOp::kRead, *scratch, **remote, std::span<const TransferSegment>(&seg, 1));
      if (!tr.ok()) {
        status = tr.status();
        break;
      }
      status = (*tr)->ObserveLanding(
          [&blocks, &run, local](size_t, uint64_t offset, std::span<const uint8_t> bytes) {
            HashLanded(blocks, run, local + offset, bytes);
          },
          kHashPieceBytes);
      if (!status.ok()) break;
      transfers.push_back(*std::move(tr));
    }
    if (status.ok()) {
      status = PostAndDeliver(transfers, runs, blocks, *scratch, indices, on_block, deadline);
    }
    transfers.clear();  // Waits for any still in flight.
    ReturnScratch(std::move(scratch));
    return status;
  }

  // Posts every transfer and hands each block to `on_block` as soon as the
  // read of its run completes, in order. A same-host transfer may complete
  // inside Post (UCX maps the store's memory and Post copies), so posting
  // runs on a helper thread: block 0 is used while later blocks are still
  // being copied, which is the per-layer pipelining a restore relies on.
  absl::Status PostAndDeliver(std::vector<std::unique_ptr<Transfer>>& transfers,
                              const std::vector<Run>& runs, const Blocks& blocks,
                              MemoryRegion& scratch, std::span<const uint32_t> indices,
                              const RawBlockCallback& on_block, absl::Time deadline) {
    absl::Mutex mu;
    size_t posted = 0;        // Transfers [0, posted) were posted.
    absl::Status post_error;  // Why posting stopped early.
    bool cancelled = false;   // The reader gave up; stop posting.
    auto post_all = [&] {
      for (size_t g = 0; g < transfers.size(); ++g) {
        {
          absl::MutexLock lock(&mu);
          if (cancelled) return;
        }
        absl::Status s = transfers[g]->Post();
        absl::MutexLock lock(&mu);
        if (!s.ok()) {
          post_error = s;
          return;
        }
        posted = g + 1;
      }
    };
    std::thread poster;
    if (transfers.size() > 1) {
      poster = std::thread(post_all);
    } else {
      post_all();
    }
    absl::Status status;
    for (size_t g = 0; g < transfers.size() && status.ok(); ++g) {
      {
        absl::MutexLock lock(&mu);
        auto ready = [&]() { return posted > g || !post_error.ok(); };
        mu.Await(absl::Condition(&ready));
        if (posted <= g) {
          status = post_error;
          break;
        }
      }
      status = transfers[g]->Wait(Until(deadline));
      for (size_t k = runs[g].first; k < runs[g].end && status.ok(); ++k) {
        status = on_block(
            indices[k],
            std::string_view(reinterpret_cast<const char*>(scratch.data()) + blocks.begin[k],
                             blocks.End(k) - blocks.begin[k]),
            blocks.hashes[k].Digest());
      }
    }
    {
      absl::MutexLock lock(&mu);
      cancelled = true;
    }
    if (poster.joinable()) poster.join();
    return status;
  }

  absl::StatusOr<std::shared_ptr<Endpoint>> EndpointFor(v1::KvStore::StubInterface& stub,
                                                        const std::string& address,
                                                        absl::Time deadline) {
    {
      absl::MutexLock lock(&mu_);
      auto it = endpoints_.find(address);
      if (it != endpoints_.end() && it->second->status().ok()) return it->second;
    }
    v1::ExchangeEndpointsRequest req;
    req.add_transports("ucx");
    req.set_client_worker_address(transport_->address());
    v1::ExchangeEndpointsResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(deadline));
    KRUL_RETURN_IF_ERROR(FromGrpcStatus(stub.ExchangeEndpoints(&ctx, req, &resp)));
    if (resp.transport() != "ucx") {
      return absl::FailedPreconditionError(
          absl::StrCat(address, " offers no UCX data plane (start it with --ucx)"));
    }
    absl::StatusOr<std::unique_ptr<Endpoint>> ep =
        transport_->Connect(resp.server_worker_address());
    if (!ep.ok()) return ep.status();
    std::shared_ptr<Endpoint> shared = *std::move(ep);
    absl::MutexLock lock(&mu_);
    endpoints_[address] = shared;
    return shared;
  }

  void ForgetEndpoint(const std::string& address) {
    absl::MutexLock lock(&mu_);
    endpoints_.erase(address);
  }

  // Registered scratch memory is reused across reads: registering (and, for
  // AllocateRegion, zeroing) tens of MiB per read would cost more than the
  // transfer over shared memory.
  std::unique_ptr<MemoryRegion> TakeScratch(uint64_t bytes) {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < scratch_.size(); ++i) {
      if (scratch_[i]->size() >= bytes) {
        std::unique_ptr<MemoryRegion> r = std::move(scratch_[i]);
        scratch_.erase(scratch_.begin() + static_cast<std::ptrdiff_t>(i));
        return r;
      }
    }
    return nullptr;
  }
  void ReturnScratch(std::unique_ptr<MemoryRegion> r) {
    absl::MutexLock lock(&mu_);
    scratch_.push_back(std::move(r));
    // Keep at most a few, the largest ones.
    std::sort(scratch_.begin(), scratch_.end(),
              [](const auto& a, const auto& b) { return a->size() > b->size(); });
    if (scratch_.size() > 4) scratch_.resize(4);
  }

  Transport* const transport_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Endpoint>> endpoints_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<MemoryRegion>> scratch_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::unique_ptr<BlockTransport> NewUcxBlockTransport(Transport* transport) {
  return std::make_unique<UcxBlockTransport>(transport);
}

}  // namespace krul
