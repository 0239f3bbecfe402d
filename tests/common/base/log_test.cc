#include "krul/base/log.h"

#include <cstdio>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace krul {
namespace {

// Captures log lines in a temporary file for the test's lifetime.
class LogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    file_ = std::tmpfile();
    ASSERT_NE(file_, nullptr);
    SetLogOutput(file_);
  }
  void TearDown() override {
    SetLogOutput(nullptr);
    SetMinLogSeverity(LogSeverity::kInfo);
    std::fclose(file_);
  }
  std::string Captured() {
    std::fflush(file_);
    std::rewind(file_);
    std::string text;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), file_)) > 0) text.append(buf, n);
    return text;
  }
  std::FILE* file_ = nullptr;
};

TEST_F(LogTest, OneLineWithTimeSeverityAndPlace) {
  const int line = __LINE__ + 1;
  KRUL_LOG(WARNING) << "put " << 7 << " expired";
  const std::string text = Captured();
  const std::regex re(
      R"(^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARNING log_test\.cc:(\d+)\] put 7 expired\n$)");
  std::smatch m;
  ASSERT_TRUE(std::regex_match(text, m, re)) << text;
  EXPECT_EQ(m[1].str(), std::to_string(line));
}

TEST_F(LogTest, BelowTheMinimumIsDroppedAndNotEvaluated) {
  SetMinLogSeverity(LogSeverity::kWarning);
  int evaluated = 0;
  auto operand = [&] { return ++evaluated; };
  KRUL_LOG(INFO) << "hidden " << operand();
  KRUL_LOG(ERROR) << "shown " << operand();
  const std::string text = Captured();
  EXPECT_EQ(text.find("hidden"), std::string::npos) << text;
  EXPECT_NE(text.find(" ERROR "), std::string::npos) << text;
  EXPECT_NE(text.find("shown 1"), std::string::npos) << text;
  EXPECT_EQ(evaluated, 1);
}

TEST_F(LogTest, IfElseParsesAsWritten) {
  bool took_else = false;
  if (false)
    KRUL_LOG(INFO) << "never";
  else
    took_else = true;
  EXPECT_TRUE(took_else);
  EXPECT_EQ(Captured(), "");
}

TEST_F(LogTest, ConcurrentLinesDoNotInterleave) {
  constexpr int kThreads = 4;
  constexpr int kLines = 200;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t] {
      for (int i = 0; i < kLines; ++i) {
        KRUL_LOG(INFO) << "thread " << t << " line " << i << " " << std::string(100, 'a' + t);
      }
    });
  }
  for (auto& t : threads) t.join();
  const std::regex re(R"(.* INFO log_test\.cc:\d+\] thread (\d) line \d+ ([a-d])\2{99})");
  int lines = 0;
  for (absl::string_view l : absl::StrSplit(Captured(), '\n', absl::SkipEmpty())) {
    std::smatch m;
    const std::string s(l);
    ASSERT_TRUE(std::regex_match(s, m, re)) << s;
    EXPECT_EQ(m[2].str()[0], 'a' + std::stoi(m[1].str())) << s;
    ++lines;
  }
  EXPECT_EQ(lines, kThreads * kLines);
}

TEST(LogSeverityTest, ParsesNamesInAnyCase) {
  EXPECT_EQ(*ParseLogSeverity("info"), LogSeverity::kInfo);
  EXPECT_EQ(*ParseLogSeverity("WARNING"), LogSeverity::kWarning);
  EXPECT_EQ(*ParseLogSeverity("Error"), LogSeverity::kError);
  EXPECT_EQ(ParseLogSeverity("debug").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(ParseLogSeverity("").ok());

  LogSeverity s = LogSeverity::kInfo;
  std::string error;
  EXPECT_TRUE(AbslParseFlag("error", &s, &error));
  EXPECT_EQ(s, LogSeverity::kError);
  EXPECT_FALSE(AbslParseFlag("loud", &s, &error));
  EXPECT_NE(error.find("loud"), std::string::npos);
  EXPECT_EQ(AbslUnparseFlag(LogSeverity::kWarning), "warning");
}

}  // namespace
}  // namespace krul
