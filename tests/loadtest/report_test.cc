// Quantiles, the run summary's accounting and groups, requests.csv quoting,
// the mode comparison, and the Prometheus exposition parser. Expected
// values are worked out by hand in the comments.
#include "report/report.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "report/metrics_scrape.h"

namespace krul::loadtest {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

TEST(QuantileTest, LinearBetweenClosestRanks) {
  EXPECT_EQ(Quantile({}, 0.5), 0);
  EXPECT_EQ(Quantile({7}, 0.99), 7);
  // Sorted 1 2 3 4: h = 0.5 * 3 = 1.5 -> 2.5; h = 0.9 * 3 = 2.7 -> 3.7.
  EXPECT_DOUBLE_EQ(Quantile({4, 1, 3, 2}, 0.5), 2.5);
  EXPECT_DOUBLE_EQ(Quantile({4, 1, 3, 2}, 0.9), 3.7);
  EXPECT_DOUBLE_EQ(Quantile({4, 1, 3, 2}, 0.0), 1);
  EXPECT_DOUBLE_EQ(Quantile({4, 1, 3, 2}, 1.0), 4);
}

RequestRecord Answered(int index, int turn, const std::string& mode, double ttft, double e2e,
                       const std::string& endpoint = "127.0.0.1:1") {
  RequestRecord r;
  r.index = index;
  r.turn = turn;
  r.conversation = "c" + std::to_string(index);
  r.endpoint = endpoint;
  r.mode = mode;
  r.restore = turn > 1 ? "hit" : "none";
  r.result.http_status = 200;
  r.result.ttft_ms = ttft;
  r.result.e2e_ms = e2e;
  r.result.completion_tokens = 10;
  r.result.prompt_tokens = 20;
  return r;
}

TEST(SummarizeRunTest, CountsGroupsAndRates) {
  RunResult run;
  run.planned = 6;
  run.records = {Answered(0, 1, "krul", 100, 500), Answered(1, 2, "krul", 300, 900),
                 Answered(2, 1, "load", 200, 700, "127.0.0.1:2")};
  RequestRecord failed;
  failed.index = 3;
  failed.turn = 1;
  failed.requested_mode = "load";
  failed.endpoint = "127.0.0.1:2";
  failed.result.http_status = 503;
  failed.result.error_kind = "http_503";
  run.records.push_back(failed);
  run.not_sent.after_error = 1;
  run.not_sent.max_requests = 1;
  run.wall_s = 2.0;
  ReportOptions options;
  options.slo_ttft_ms = 250;
  const json s = SummarizeRun(run, options);
  EXPECT_EQ(s["requests"]["sent"], 4);
  EXPECT_EQ(s["requests"]["ok"], 3);
  EXPECT_EQ(s["requests"]["failed"], 1);
  EXPECT_EQ(s["requests"]["not_sent"]["total"], 2);
  EXPECT_TRUE(s["requests"]["accounted"].get<bool>());  // 4 + 2 == 6
  const json& all = s["all"];
  EXPECT_EQ(all["errors"]["http_503"], 1);
  EXPECT_DOUBLE_EQ(all["ttft_ms"]["p50"].get<double>(), 200);  // 100 200 300
  EXPECT_DOUBLE_EQ(all["ttft_restored_ms"]["p50"].get<double>(), 300);
  EXPECT_DOUBLE_EQ(all["throughput_rps"].get<double>(), 1.5);        // 3 ok / 2 s
  EXPECT_DOUBLE_EQ(all["output_tokens_per_s"].get<double>(), 15.0);  // 30 / 2 s
  EXPECT_DOUBLE_EQ(all["goodput_rps"].get<double>(), 1.0);           // 100, 200 <= 250
  EXPECT_DOUBLE_EQ(all["goodput_fraction"].get<double>(), 0.5);      // 2 of 4 sent
  EXPECT_EQ(all["restore"]["hit"], 1);
  EXPECT_DOUBLE_EQ(all["history_hit_rate"].get<double>(), 1.0);  // the one later turn hit
  // The failed request has no reported mode: its requested one groups it.
  EXPECT_EQ(s["by_mode"]["load"]["count"], 2);
  EXPECT_EQ(s["by_mode"]["krul"]["count"], 2);
  EXPECT_EQ(s["by_endpoint"]["127.0.0.1:2"]["count"], 2);
  const std::string table = FormatSummaryTable(s);
  EXPECT_THAT(table, HasSubstr("mode krul"));
  EXPECT_THAT(table, HasSubstr("4 sent, 3 ok, 1 failed, 2 not sent"));
}

TEST(RequestsCsvTest, OneQuotedRowPerRecord) {
  RequestRecord r = Answered(0, 1, "krul", 12.5, 40);
  r.result.error = "said \"no\", twice";
  const std::string csv = RequestsCsv({r, Answered(1, 2, "krul", 1, 2)});
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 3);
  EXPECT_THAT(csv, HasSubstr(",\"said \"\"no\"\", twice\","));
  EXPECT_THAT(csv, HasSubstr(",12.500,"));
}

TEST(CompareModesTest, RatiosAgainstRecomputeAndLoad) {
  auto summary = [](double restored_p50) {
    RunResult run;
    run.planned = 2;
    run.records = {Answered(0, 1, "", 50, 100), Answered(1, 2, "", restored_p50, 200)};
    run.wall_s = 1;
    return SummarizeRun(run, {});
  };
  const json c =
      CompareModes({{"recompute", summary(400)}, {"load", summary(200)}, {"krul", summary(100)}});
  ASSERT_EQ(c.size(), 3u);
  EXPECT_DOUBLE_EQ(c[2]["vs_recompute"]["restored_ttft_p50"].get<double>(), 4.0);  // 400 / 100
  EXPECT_DOUBLE_EQ(c[2]["vs_load"]["restored_ttft_p50"].get<double>(), 2.0);       // 200 / 100
  EXPECT_DOUBLE_EQ(c[0]["vs_recompute"]["restored_ttft_p50"].get<double>(), 1.0);
  const json alone = CompareModes({{"krul", summary(100)}});
  EXPECT_TRUE(alone[0]["vs_load"]["restored_ttft_p50"].is_null());
  EXPECT_THAT(FormatCompareTable(c), HasSubstr("4.00x"));
}

TEST(ExpositionTest, ParsesNamesLabelsAndValues) {
  auto samples = ParseExposition(
      "# HELP krul_kvstore_hits_total Hits\n"
      "# TYPE krul_kvstore_hits_total counter\n"
      "krul_kvstore_hits_total{tier=\"dram\"} 3\n"
      "krul_kvstore_hits_total{tier=\"rocksdb\"} 2\n"
      "krul_kvstore_misses_total 1 1700000000000\n"
      "krul_worker_fallbacks_total{reason=\"a \\\"b\\\"\",x=\"y\"} 4.5e1\n");
  ASSERT_TRUE(samples.ok()) << samples.status();
  ASSERT_EQ(samples->size(), 4u);
  EXPECT_EQ(SumSamples(*samples, "krul_kvstore_hits_total"), 5);
  EXPECT_EQ(SumSamples(*samples, "krul_kvstore_hits_total", "tier", "dram"), 3);
  EXPECT_EQ(SumSamples(*samples, "krul_kvstore_misses_total"), 1);
  EXPECT_EQ(SumByLabel(*samples, "krul_worker_fallbacks_total", "reason").at("a \"b\""), 45);
  EXPECT_FALSE(ParseExposition("metric{tier=\"x} 1\n").ok());
  EXPECT_FALSE(ParseExposition("metric one\n").ok());
}

TEST(SummarizeScrapesTest, DeltasAndHitRate) {
  const std::vector<ScrapeTarget> targets = {{"kvstore", {"127.0.0.1", 1}},
                                             {"worker", {"127.0.0.1", 2}}};
  ScrapeRound before, after;
  before.samples = {*ParseExposition("krul_kvstore_hits_total{tier=\"dram\"} 2\n"
                                     "krul_kvstore_misses_total 1\n"
                                     "krul_kvstore_bytes{tier=\"dram\"} 10\n"),
                    *ParseExposition("krul_worker_restores_total{result=\"hit\"} 1\n"
                                     "krul_worker_stored_bytes_total 100\n")};
  after.samples = {*ParseExposition("krul_kvstore_hits_total{tier=\"dram\"} 8\n"
                                    "krul_kvstore_misses_total 3\n"
                                    "krul_kvstore_bytes{tier=\"dram\"} 70\n"
                                    "krul_kvstore_evictions_total{tier=\"dram\"} 1\n"),
                   *ParseExposition("krul_worker_restores_total{result=\"hit\"} 4\n"
                                    "krul_worker_restores_total{result=\"miss\"} 1\n"
                                    "krul_worker_stored_bytes_total 400\n")};
  before.errors = after.errors = {"", ""};
  const json s = SummarizeScrapes(targets, before, after);
  // kvstore: 6 hits, 2 misses -> 0.75; bytes are the gauge after the run.
  EXPECT_DOUBLE_EQ(s["kvstore"]["hit_rate"].get<double>(), 0.75);
  EXPECT_EQ(s["kvstore"]["bytes_by_tier"]["dram"], 70);
  EXPECT_EQ(s["kvstore"]["evictions_by_tier"]["dram"], 1);
  // workers: 3 hits of 4 lookups; 300 bytes stored during the run.
  EXPECT_DOUBLE_EQ(s["workers"]["hit_rate"].get<double>(), 0.75);
  EXPECT_EQ(s["workers"]["stored_bytes"], 300);
  EXPECT_TRUE(s["workers"]["complete"].get<bool>());
}

}  // namespace
}  // namespace krul::loadtest
