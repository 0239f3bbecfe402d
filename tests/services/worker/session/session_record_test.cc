// The session record (what travels in the manifest's plan field) round-
// trips and rejects damaged or inconsistent bytes.
#include "worker/session/session_record.h"

#include <xxhash.h>

#include <cstring>

#include "gtest/gtest.h"

namespace krul::worker {
namespace {

SessionRecord Sample() {
  SessionRecord r;
  r.model_id = "krul12L@0123456789abcdef";
  r.chat_template = ChatTemplateKind::kRoles;
  r.mode = RestoreMode::kKrulFixed;
  r.dtype = DType::kF16;
  r.policy = SplitPolicy::kPyramid;
  r.message_count = 3;
  r.digest = 0x1122334455667788ull;
  r.tokens = {1, 10, 20, 30, 40, 50};
  r.kv_tokens = 5;
  r.recompute_tokens = {4, 2, 2, 0};
  r.predicted_seconds = 0.25;
  r.expected_new_tokens = 64;
  r.granularity_tokens = 16;
  r.plan = CompressionPlan::Uncompressed(4);
  r.plan.pairs.push_back({1, 3, 0.5});
  r.plan.target_ratio = 4.0 / 3.0;
  SimilarityEstimate e = SimilarityEstimate::Empty(4);
  e.prefill_distance[1 * 4 + 3] = e.prefill_distance[3 * 4 + 1] = 2.5;
  e.decode_distance[1 * 4 + 3] = e.decode_distance[3 * 4 + 1] = 0.5;
  e.distance[1 * 4 + 3] = e.distance[3 * 4 + 1] = 3.0;
  e.first_mass_sum = {1, 2, 3, 4};
  e.last_mass_sum = {2, 2, 2, 2};
  e.mass_weight = {8, 8, 8, 8};
  e.rows_represented = 8;
  e.prefill_tokens = 5;
  e.decode_tokens = 1;
  r.estimate = e;
  return r;
}

TEST(SessionRecordTest, RoundTrips) {
  const SessionRecord r = Sample();
  auto back = DecodeSessionRecord(EncodeSessionRecord(r));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->model_id, r.model_id);
  EXPECT_EQ(back->chat_template, r.chat_template);
  EXPECT_EQ(back->mode, r.mode);
  EXPECT_EQ(back->dtype, r.dtype);
  EXPECT_EQ(back->policy, r.policy);
  EXPECT_EQ(back->message_count, r.message_count);
  EXPECT_EQ(back->digest, r.digest);
  EXPECT_EQ(back->tokens, r.tokens);
  EXPECT_EQ(back->kv_tokens, r.kv_tokens);
  EXPECT_EQ(back->recompute_tokens, r.recompute_tokens);
  EXPECT_EQ(back->predicted_seconds, r.predicted_seconds);
  EXPECT_EQ(back->expected_new_tokens, r.expected_new_tokens);
  EXPECT_EQ(back->granularity_tokens, r.granularity_tokens);
  EXPECT_EQ(back->plan, r.plan);
  ASSERT_TRUE(back->estimate.has_value());
  EXPECT_EQ(back->estimate->distance, r.estimate->distance);
  EXPECT_EQ(back->estimate->prefill_distance, r.estimate->prefill_distance);
  EXPECT_EQ(back->estimate->mass_weight, r.estimate->mass_weight);
  EXPECT_EQ(back->estimate->prefill_tokens, 5);
  EXPECT_EQ(back->estimate->rows_represented, 8);
}

TEST(SessionRecordTest, WithoutEstimateAndVersionOneStillRead) {
  SessionRecord r = Sample();
  r.estimate.reset();
  const std::string v2 = EncodeSessionRecord(r);
  auto back = DecodeSessionRecord(v2);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_FALSE(back->estimate.has_value());
  // Version 1 = version 2 without the (empty) estimate field.
  std::string v1 = v2.substr(0, v2.size() - 4 - 8);
  const uint16_t one = 1;
  std::memcpy(v1.data() + 4, &one, 2);
  const uint64_t checksum = XXH3_64bits(v1.data(), v1.size());
  v1.append(reinterpret_cast<const char*>(&checksum), 8);
  back = DecodeSessionRecord(v1);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_FALSE(back->estimate.has_value());
  EXPECT_EQ(back->plan, r.plan);
  EXPECT_EQ(back->tokens, r.tokens);
}

TEST(SessionRecordTest, EstimateOfAnotherLayerCountIsInvalid) {
  SessionRecord r = Sample();
  r.estimate = SimilarityEstimate::Empty(5);
  EXPECT_EQ(DecodeSessionRecord(EncodeSessionRecord(r)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SessionRecordTest, EveryFlippedBitIsDataLoss) {
  const std::string bytes = EncodeSessionRecord(Sample());
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::string bad = bytes;
    bad[i] ^= 0x04;
    auto r = DecodeSessionRecord(bad);
    ASSERT_FALSE(r.ok()) << "byte " << i;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << "byte " << i;
  }
}

TEST(SessionRecordTest, TruncationIsDataLoss) {
  const std::string bytes = EncodeSessionRecord(Sample());
  for (size_t n = 0; n < bytes.size(); ++n) {
    auto r = DecodeSessionRecord(bytes.substr(0, n));
    ASSERT_FALSE(r.ok()) << n;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << n;
  }
}

TEST(SessionRecordTest, InconsistentContentIsInvalidArgument) {
  SessionRecord r = Sample();
  r.recompute_tokens = {1, 2, 0, 0};  // not a pyramid
  EXPECT_EQ(DecodeSessionRecord(EncodeSessionRecord(r)).status().code(),
            absl::StatusCode::kInvalidArgument);
  r = Sample();
  r.kv_tokens = 7;  // more KV than tokens
  EXPECT_EQ(DecodeSessionRecord(EncodeSessionRecord(r)).status().code(),
            absl::StatusCode::kInvalidArgument);
  r = Sample();
  r.recompute_tokens = {4, 2, 2};  // three layers, plan has four
  EXPECT_EQ(DecodeSessionRecord(EncodeSessionRecord(r)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SessionRecordTest, RestorePlanLoadsExactlyWhatIsNotRecomputed) {
  SessionRecord r = Sample();
  r.dtype = DType::kF32;
  KvShape shape{4, 2, 8};
  auto plan = RestorePlanFromRecord(r, shape, 3);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->history_tokens, 5);
  EXPECT_EQ(plan->new_tokens, 3);
  EXPECT_EQ(plan->recompute_tokens, r.recompute_tokens);
  // Hand-computed: layer 0 alone loads [4,5); pair (1,3) loads [2,5) for
  // both then [0,2) for layer 3; layer 2 alone loads [2,5).
  std::vector<int> loaded(4, 0);
  for (const LoadStep& s : plan->loads) {
    for (int l : s.write_layers) loaded[l] += s.end - s.begin;
  }
  EXPECT_EQ(loaded, (std::vector<int>{1, 3, 3, 5}));
  EXPECT_FALSE(RestorePlanFromRecord(r, KvShape{5, 2, 8}, 3).ok());
}

}  // namespace
}  // namespace krul::worker
