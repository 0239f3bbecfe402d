// What the worker stores with a conversation version besides its KV blocks:
// the history's token ids, which messages they cover, and how the KV was
// split and compressed. It travels in the manifest's opaque `plan` field, so
// one Lookup gives a restoring worker everything it needs before the first
// block arrives.
//
// Byte layout (little-endian, version 2; version 1 records, without the
// estimate, are still read):
//   "KRWS" | u16 version=2 | u16 flags=0 |
//   u32 len | model_id bytes |
//   u8 chat_template | u8 mode | u8 dtype | u8 policy |
//   u32 message_count | u64 digest |
//   u32 n_tokens | n_tokens x i32 tokens | u32 kv_tokens |
//   u32 n_layers | n_layers x u32 recompute_tokens |
//   f64 predicted_seconds | u32 expected_new_tokens | u32 granularity_tokens |
//   u32 len | SerializePlan bytes (compression_plan.h) |
//   u32 len | SerializeEstimate bytes (estimate_codec.h; len 0 = none) |
//   u64 XXH3-64 of all preceding bytes
//
// Thread-safe (pure functions).
#ifndef KRUL_SERVICES_WORKER_SESSION_SESSION_RECORD_H_
#define KRUL_SERVICES_WORKER_SESSION_SESSION_RECORD_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/base/dtype.h"
#include "krul/compress/compression_plan.h"
#include "krul/compress/compressor.h"
#include "krul/compress/similarity_estimator.h"
#include "krul/restore/restore_mode.h"
#include "krul/restore/restore_plan.h"
#include "worker/core/options.h"

namespace krul::worker {

struct SessionRecord {
  std::string model_id;
  ChatTemplateKind chat_template = ChatTemplateKind::kPlain;
  RestoreMode mode = RestoreMode::kKrul;  // how the KV below was stored
  DType dtype = DType::kF32;
  SplitPolicy policy = SplitPolicy::kPyramid;
  // The history covers messages [0, message_count) of the conversation,
  // the last one being the assistant answer this worker generated; digest
  // = PrefixDigest of those messages (chat_template.h).
  uint32_t message_count = 0;
  uint64_t digest = 0;
  // BOS + every token of the history. KV exists for [0, kv_tokens); the
  // rest (at most the last sampled token) is prefilled with the next input.
  std::vector<int> tokens;
  int kv_tokens = 0;
  // Per layer: tokens [0, n_l) are recomputed at restore, [n_l, kv_tokens)
  // are stored (a pyramid).
  std::vector<int> recompute_tokens;
  double predicted_seconds = 0;
  int expected_new_tokens = 0;
  int granularity_tokens = 16;
  // The storage plan (layer pairs sharing KV; uncompressed for most modes).
  CompressionPlan plan;
  // krul: the conversation's similarity estimate so far (every turn's
  // prefill and decode, older turns decayed), which the next turn's
  // estimate is added to. Absent for the other modes and version 1.
  std::optional<SimilarityEstimate> estimate;
};

std::string EncodeSessionRecord(const SessionRecord& record);

// DATA_LOSS for truncated bytes, a bad magic, trailing bytes or a checksum
// mismatch (also inside the estimate); UNIMPLEMENTED for another version;
// INVALID_ARGUMENT when the decoded record is inconsistent (an unknown enum
// value, kv_tokens outside [1, tokens], recompute_tokens not a pyramid
// within [0, kv_tokens], a plan or estimate that does not validate or has
// another layer count).
absl::StatusOr<SessionRecord> DecodeSessionRecord(std::string_view bytes);

// The restore plan the record's KV was stored for: its layout (from the
// plan and `shape`), split, loads and stored ranges; predicted_seconds is
// the one made at turn end, so the Restorer re-plans when costs moved.
// `new_tokens` is the real new-input length. INVALID_ARGUMENT when the
// record does not fit `shape`.
absl::StatusOr<RestorePlan> RestorePlanFromRecord(const SessionRecord& record, const KvShape& shape,
                                                  int new_tokens);

}  // namespace krul::worker

#endif  // KRUL_SERVICES_WORKER_SESSION_SESSION_RECORD_H_
