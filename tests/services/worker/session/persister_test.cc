// The layer pairs the persister stores each mode with: krul selects from the
// conversation's own estimate, optionally shrunk toward the calibration
// estimate (krul_prior_rows).
#include "worker/session/persister.h"

#include <memory>
#include <optional>
#include <string>

#include "gtest/gtest.h"
#include "krul/compress/selector.h"
#include "krul/engine/kv_cache.h"

namespace krul::worker {
namespace {

constexpr int kLayers = 4;

// Mean distances given per pair (one represented row), no edge mass.
SimilarityEstimate Estimate(double d01, double d23, double d02, double d13, double rows) {
  SimilarityEstimate e = SimilarityEstimate::Empty(kLayers);
  auto set = [&](int a, int b, double d) {
    e.distance[a * kLayers + b] = e.distance[b * kLayers + a] = d * rows;
  };
  for (int a = 0; a < kLayers; ++a) {
    for (int b = a + 1; b < kLayers; ++b) set(a, b, 1.0);
  }
  set(0, 1, d01);
  set(2, 3, d23);
  set(0, 2, d02);
  set(1, 3, d13);
  for (int l = 0; l < kLayers; ++l) e.mass_weight[l] = rows;
  e.rows_represented = rows;
  return e;
}

std::vector<std::pair<int, int>> Pairs(const CompressionPlan& plan) {
  std::vector<std::pair<int, int>> out;
  for (const LayerPair& p : plan.pairs) out.emplace_back(p.first, p.second);
  return out;
}

PersisterOptions Options() {
  PersisterOptions o;
  o.shape = KvShape{kLayers, 1, 4};
  o.selector.target_ratio = 2.0;  // two pairs of four layers
  o.selector.sensitivity_threshold = 1.0;
  return o;
}

CostCoefficients Costs() {
  CostCoefficients c;
  c.compute.per_token_s = 1e-6;
  c.load.bytes_per_second = 1e9;
  return c;
}

struct Harness {
  explicit Harness(const PersisterOptions& options)
      : cost_model(*CostModel::Create(Costs())),
        persister(options, &store, cost_model.get(), &metrics) {}
  MemoryConversationStore store;
  std::unique_ptr<CostModel> cost_model;
  WorkerMetrics metrics;
  Persister persister;
};

// The conversation pairs (0,1)+(2,3); the calibration set (0,2)+(1,3).
const SimilarityEstimate kOwn = Estimate(0.1, 0.1, 0.5, 0.5, 100);
const SimilarityEstimate kCalibration = Estimate(0.5, 0.5, 0.1, 0.1, 10000);

TEST(PersisterTest, KrulPairsFollowTheConversationWithoutAPrior) {
  Harness h(Options());
  std::optional<SimilarityEstimate> own = kOwn;
  EXPECT_EQ(Pairs(h.persister.PairsFor(RestoreMode::kKrul, own)),
            (std::vector<std::pair<int, int>>{{0, 1}, {2, 3}}));
}

TEST(PersisterTest, KrulPriorPullsTowardTheCalibrationPairs) {
  PersisterOptions o = Options();
  o.krul_prior = kCalibration;
  // 50 rows of prior: (0,1) = (100 * 0.1 + 50 * 0.5) / 150 = 0.23 < (0,2)
  // = (100 * 0.5 + 50 * 0.1) / 150 = 0.37: still the conversation's pairs.
  o.krul_prior_rows = 50;
  Harness light(o);
  std::optional<SimilarityEstimate> own = kOwn;
  EXPECT_EQ(Pairs(light.persister.PairsFor(RestoreMode::kKrul, own)),
            (std::vector<std::pair<int, int>>{{0, 1}, {2, 3}}));
  // 400 rows: (0,1) = (10 + 200) / 500 = 0.42 > (0,2) = (50 + 40) / 500 = 0.18.
  o.krul_prior_rows = 400;
  Harness heavy(o);
  EXPECT_EQ(Pairs(heavy.persister.PairsFor(RestoreMode::kKrul, own)),
            (std::vector<std::pair<int, int>>{{0, 2}, {1, 3}}));
  // The prior never reaches the other modes.
  EXPECT_TRUE(heavy.persister.PairsFor(RestoreMode::kLoad, own).pairs.empty());
}

TEST(PersisterTest, KrulWithoutAnEstimateSharesNothing) {
  PersisterOptions o = Options();
  o.krul_prior = kCalibration;
  o.krul_prior_rows = 400;
  Harness h(o);
  std::optional<SimilarityEstimate> none;
  EXPECT_TRUE(h.persister.PairsFor(RestoreMode::kKrul, none).pairs.empty());
}

const std::string& ModelId() {
  static const std::string* id = new std::string("model-m");
  return *id;
}

// A job with a rewrite (the session's canonical re-prefill): the rewrite
// runs before anything is stored, and then what it held (the session's
// engine slot) is released; a failed rewrite drops the job, counted.
PersistJob RewriteJob(const std::string& id, std::shared_ptr<int> held, absl::Status result,
                      bool* ran, size_t* versions_then, const MemoryConversationStore* store) {
  PersistJob job;
  job.key.set_tenant("t");
  job.key.set_conversation_id(id);
  job.key.set_turn(1);
  job.record.model_id = ModelId();
  job.record.mode = RestoreMode::kLoad;
  job.record.message_count = 2;
  job.record.tokens = {1, 5, 6, 7};
  job.record.kv_tokens = 4;
  auto cache = KvCache::Create(kLayers, 4, 4);
  EXPECT_TRUE(cache.ok());
  job.cache = std::make_unique<KvCache>(*std::move(cache));
  job.rewrite = [held = std::move(held), result, ran, versions_then, store](BackendKvCache&) {
    *ran = true;
    *versions_then = store->versions();
    return result;
  };
  return job;
}

TEST(PersisterTest, ARewriteRunsBeforeTheStoreAndReleasesWhatItHolds) {
  PersisterOptions o = Options();
  o.model_id = ModelId();
  Harness h(o);
  auto held = std::make_shared<int>(0);
  bool ran = false;
  size_t versions_then = 99;
  ASSERT_TRUE(
      h.persister.Submit(RewriteJob("ok", held, absl::OkStatus(), &ran, &versions_then, &h.store)));
  ASSERT_TRUE(h.persister.Drain(absl::Seconds(30)));
  EXPECT_TRUE(ran);
  EXPECT_EQ(versions_then, 0u);
  EXPECT_EQ(h.store.versions(), 1u);
  EXPECT_EQ(held.use_count(), 1);  // the job's copy is gone
}

TEST(PersisterTest, AFailedRewriteDropsTheJob) {
  Harness h(Options());
  auto held = std::make_shared<int>(0);
  bool ran = false;
  size_t versions_then = 99;
  ASSERT_TRUE(h.persister.Submit(
      RewriteJob("bad", held, absl::InternalError("device lost"), &ran, &versions_then, &h.store)));
  ASSERT_TRUE(h.persister.Drain(absl::Seconds(30)));
  EXPECT_TRUE(ran);
  EXPECT_EQ(h.store.versions(), 0u);
  EXPECT_EQ(held.use_count(), 1);
  EXPECT_NE(h.metrics.Serialize().find("krul_worker_persists_total{result=\"error\"} 1"),
            std::string::npos);
}

}  // namespace
}  // namespace krul::worker
