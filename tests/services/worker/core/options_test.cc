// Worker options: parsing helpers and validation errors that name the field.
#include "worker/core/options.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace krul::worker {
namespace {

using ::testing::HasSubstr;

WorkerOptions Valid() {
  WorkerOptions o;
  o.synthetic = true;
  o.synthetic_shape = *ParseModelShape("64,172,5,8,4,512,512");
  return o;
}

void ExpectInvalid(const WorkerOptions& o, const std::string& field) {
  absl::Status s = o.Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
  EXPECT_THAT(std::string(s.message()), HasSubstr(field));
}

TEST(WorkerOptionsTest, DefaultsWithAModelValidate) {
  EXPECT_TRUE(Valid().Validate().ok());
  WorkerOptions file;
  file.model_path = "model.bin";
  EXPECT_TRUE(file.Validate().ok());
}

TEST(WorkerOptionsTest, ErrorsNameTheField) {
  WorkerOptions none;
  ExpectInvalid(none, "model");
  WorkerOptions o = Valid();
  o.http_port = 70000;
  ExpectInvalid(o, "http_port");
  o = Valid();
  o.max_active = 0;
  ExpectInvalid(o, "max_active");
  o = Valid();
  o.max_queue = -1;
  ExpectInvalid(o, "max_queue");
  o = Valid();
  o.http_max_connections = o.max_active + o.max_queue;  // no slot left for probes and 429s
  ExpectInvalid(o, "http_max_connections");
  o = Valid();
  o.http_header_timeout = absl::ZeroDuration();
  ExpectInvalid(o, "http_header_timeout");
  o = Valid();
  o.http_body_timeout = absl::Seconds(-1);
  ExpectInvalid(o, "http_body_timeout");
  o = Valid();
  o.http_keep_alive_timeout = absl::ZeroDuration();
  ExpectInvalid(o, "http_keep_alive_timeout");
  o = Valid();
  o.http_keep_alive_max_requests = 0;
  ExpectInvalid(o, "http_keep_alive_max_requests");
  o = Valid();
  o.target_ratio = 2.5;
  ExpectInvalid(o, "target_ratio");
  o = Valid();
  o.krul_prior_rows = -1;
  ExpectInvalid(o, "krul_prior_rows");
  o = Valid();
  o.krul_quality_budget = 0.01;  // no calibration to predict losses with
  ExpectInvalid(o, "krul_quality_budget");
  o.krul_calibration = "pairs.txt";
  EXPECT_TRUE(o.Validate().ok());
  o = Valid();
  o.krul_neighbours = 0;
  ExpectInvalid(o, "krul_neighbours");
  o = Valid();
  o.krul_sensitivity_quantile = 1.5;
  ExpectInvalid(o, "krul_sensitivity_quantile");
  o = Valid();
  o.krul_estimate_decay = 1.5;
  ExpectInvalid(o, "krul_estimate_decay");
  o = Valid();
  o.kv_retain_angle = 200;
  ExpectInvalid(o, "kv_retain_angle");
  o = Valid();
  o.kvstore_addresses = {"no-port"};
  ExpectInvalid(o, "kvstore");
  o = Valid();
  o.default_max_tokens = 5000;
  ExpectInvalid(o, "default_max_tokens");
  o = Valid();
  o.load_gbps = 0;
  ExpectInvalid(o, "load_gbps");
  o = Valid();
  o.fixed_pairs = "1:1";
  ExpectInvalid(o, "fixed_pairs");
  o = Valid();
  o.tenant = "";
  ExpectInvalid(o, "tenant");
}

TEST(WorkerOptionsTest, ParsesShapesPairsAndNames) {
  auto shape = ParseModelShape("128,352,12,8,2,512,256");
  ASSERT_TRUE(shape.ok());
  EXPECT_EQ(shape->n_layers, 12);
  EXPECT_EQ(shape->n_kv_heads, 2);
  EXPECT_EQ(shape->seq_len, 256);
  EXPECT_FALSE(ParseModelShape("1,2,3").ok());
  EXPECT_FALSE(ParseModelShape("64,172,5,8,x,512,512").ok());
  EXPECT_FALSE(ParseModelShape("64,172,5,8,3,512,512").ok());  // 8 heads over 3 KV heads

  auto pairs = ParsePairs("3:4, 7:5");
  ASSERT_TRUE(pairs.ok()) << pairs.status();
  EXPECT_EQ(*pairs, (std::vector<std::pair<int, int>>{{3, 4}, {5, 7}}));
  EXPECT_TRUE(ParsePairs("")->empty());
  EXPECT_FALSE(ParsePairs("3-4").ok());
  EXPECT_FALSE(ParsePairs("a:b").ok());

  EXPECT_EQ(*ParseDType("bf16"), DType::kBF16);
  EXPECT_FALSE(ParseDType("f64").ok());
  EXPECT_EQ(*ParseChatTemplate("roles"), ChatTemplateKind::kRoles);
  EXPECT_THAT(std::string(ParseChatTemplate("chatml").status().message()),
              HasSubstr("plain or roles"));
}

}  // namespace
}  // namespace krul::worker
