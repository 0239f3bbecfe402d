// The session record (what travels in the manifest's plan field) round-
// trips and rejects damaged or inconsistent bytes.
#include "worker/session/session_record.h"

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
