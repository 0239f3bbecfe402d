// Fuzzes one of krul-loadtest's trace parsers (loadtest/trace/trace.h): files a
// user hands to krul-loadtest. Built four times (tests/fuzz/CMakeLists.txt),
// once per format, selected by KRUL_FUZZ_TRACE_<format>.
//
// Input: the file's text.
// Properties: nothing crashes; a refusal is INVALID_ARGUMENT; under
// BadRecordPolicy::kSkip the parser accepts at least what kFail accepts,
// with the same conversations and nothing skipped; every parsed trace has
// conversations with unique ids and turns, turn lines inside the file, and
// at most kMaxSkipMessages messages kept; DetectTraceFormat never crashes.
#include <algorithm>
#include <cstdint>
#include <set>
#include <string>

#include "fuzz_util.h"
#include "trace/trace.h"

namespace {

using krul::loadtest::BadRecordPolicy;
using krul::loadtest::Trace;
using krul::loadtest::TraceOptions;

#if defined(KRUL_FUZZ_TRACE_mooncake)
constexpr auto kParse = krul::loadtest::ParseMooncake;
constexpr const char* kPath = "fuzz.jsonl";
#elif defined(KRUL_FUZZ_TRACE_sharegpt)
constexpr auto kParse = krul::loadtest::ParseShareGpt;
constexpr const char* kPath = "fuzz.json";
#elif defined(KRUL_FUZZ_TRACE_mtbench)
constexpr auto kParse = krul::loadtest::ParseMtBench;
constexpr const char* kPath = "fuzz.jsonl";
#elif defined(KRUL_FUZZ_TRACE_azure)
constexpr auto kParse = krul::loadtest::ParseAzure;
constexpr const char* kPath = "fuzz.csv";
#else
#error "define KRUL_FUZZ_TRACE_<mooncake|sharegpt|mtbench|azure>"
#endif

absl::StatusOr<Trace> Parse(std::string_view text, BadRecordPolicy policy) {
  TraceOptions options;
  options.on_bad_record = policy;
  absl::StatusOr<Trace> trace = kParse(text, kPath, options);
  if (!trace.ok()) FUZZ_CHECK(absl::IsInvalidArgument(trace.status()));
  return trace;
}

void CheckTrace(const Trace& trace, std::string_view text) {
  const int lines = static_cast<int>(std::count(text.begin(), text.end(), '\n')) + 1;
  FUZZ_CHECK(trace.skipped >= 0 && trace.skipped <= trace.records);
  FUZZ_CHECK(trace.skip_messages.size() <= static_cast<size_t>(Trace::kMaxSkipMessages));
  FUZZ_CHECK(trace.skip_messages.size() <= static_cast<size_t>(trace.skipped));
  std::set<std::string> ids;
  for (const auto& c : trace.conversations) {
    FUZZ_CHECK(ids.insert(c.id).second);
    FUZZ_CHECK(!c.turns.empty());
    for (const auto& turn : c.turns) {
      FUZZ_CHECK(turn.line >= 1 && turn.line <= lines);
      FUZZ_CHECK(turn.message_tokens >= 0 && turn.input_tokens >= 0 && turn.output_tokens >= 0);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = krul::fuzz::AsView(data, size);
  (void)krul::loadtest::DetectTraceFormat(text, kPath);

  absl::StatusOr<Trace> strict = Parse(text, BadRecordPolicy::kFail);
  absl::StatusOr<Trace> lenient = Parse(text, BadRecordPolicy::kSkip);
  if (lenient.ok()) CheckTrace(*lenient, text);
  if (strict.ok()) {
    CheckTrace(*strict, text);
    FUZZ_CHECK(strict->skipped == 0);
    FUZZ_CHECK(lenient.ok());
    FUZZ_CHECK(lenient->skipped == 0);
    FUZZ_CHECK(lenient->conversations.size() == strict->conversations.size());
    FUZZ_CHECK(lenient->turns() == strict->turns());
  }
  return 0;
}
