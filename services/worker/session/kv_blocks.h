// Between the compressor's segments and the KV store's blocks: a turn's
// CompressedKv becomes one manifest plus one encoded block per segment
// (kv_block.h), and a restore reads blocks back into the KV cache through
// the Restorer's KvSource interface.
//
//   kPlain segment  -> layout kKvTokenMajor, dims (2, num_tokens, kv_dim)
//   kMerged segment -> layout kMergedPair (layer, layer_pair), rank 1, the
//                      compressor's payload as dtype elements
#ifndef KRUL_SERVICES_WORKER_SESSION_KV_BLOCKS_H_
#define KRUL_SERVICES_WORKER_SESSION_KV_BLOCKS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "krul/compress/compressor.h"
#include "krul/kvformat/kv_block.h"
#include "krul/restore/kv_source.h"
#include "krul/restore/restore_plan.h"
#include "krul/v1/kvstore.pb.h"
#include "worker/session/conversation_store.h"

namespace krul::worker {

// Encodes one segment as a block. INVALID_ARGUMENT when the segment does not
// validate against `shape`.
absl::StatusOr<std::string> EncodeSegmentBlock(const KvSegment& segment, const KvShape& shape);

// The segment a verified block holds. DATA_LOSS when the header does not
// describe a KV segment (unknown layout or dtype, inconsistent sizes).
absl::StatusOr<KvSegment> SegmentFromBlock(const DecodedBlock& block);

struct StoredVersion {
  v1::Manifest manifest;
  std::vector<std::string> blocks;
};

// The manifest (plan = `record_bytes`, stored ranges, block refs) and blocks
// of one turn. INVALID_ARGUMENT when a segment does not encode.
absl::StatusOr<StoredVersion> BuildStoredVersion(const v1::ConversationKey& key,
                                                 const std::string& model_id,
                                                 std::string record_bytes, const CompressedKv& kv);

// The blocks of `manifest` that a restore executing `loads` reads: those
// covering a step's layers over its token range, in manifest order.
std::vector<uint32_t> BlocksForLoads(const v1::Manifest& manifest,
                                     const std::vector<LoadStep>& loads);

// Where a store source's time went (seconds), for the restore profile. The
// clock starts when the streamed read starts (the source is made).
struct StoreSourceStats {
  double first_block_seconds = 0;  // -> the first prefetched block arrived
  double blocks_seconds = 0;       // -> the last prefetched block arrived
  double wait_seconds = 0;         // Fetch blocked on blocks not yet there
  double decode_seconds = 0;       // Fetch decoding blocks into the cache
};

// A KvSource reading `manifest`'s blocks from `store`. With `prefetch`
// non-empty, making the source starts one streamed read of all those blocks
// on a background thread (one round trip instead of one per load step;
// layer 0's blocks first), so the transfer overlaps whatever the caller
// does before the first Fetch (planning); each Fetch waits only for its
// own blocks; blocks outside `prefetch` are read on demand. Fetch returns the
// encoded bytes it moved: a prefetched block counts once, in the first Fetch
// that uses it (later steps that decode it again add nothing); a block read
// on demand counts every time it is read. Errors: the store's; NOT_FOUND when the
// manifest lists no block for part of the requested range (missing
// blocks); DATA_LOSS for a block that fails verification or decoding;
// DEADLINE_EXCEEDED when a block does not arrive within `per_fetch` of the
// Fetch that waits for it. Blocks are verified once, by the store
// (ConversationStore::ReadBlocks hands over verified blocks only); the
// source decodes them. `store` must outlive the source; destroying the
// source stops the background read. `stats` (nullable, not owned) is
// filled as the source works; read it once the restore is over and the
// source destroyed.
std::unique_ptr<KvSource> MakeStoreKvSource(ConversationStore* store, v1::Manifest manifest,
                                            const KvShape& shape, absl::Duration per_fetch,
                                            std::vector<uint32_t> prefetch = {},
                                            StoreSourceStats* stats = nullptr);

}  // namespace krul::worker

#endif  // KRUL_SERVICES_WORKER_SESSION_KV_BLOCKS_H_
