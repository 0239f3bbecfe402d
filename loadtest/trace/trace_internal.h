// Helpers shared by the trace parsers (trace_*.cc); not part of the API.
#ifndef KRUL_LOADTEST_TRACE_TRACE_INTERNAL_H_
#define KRUL_LOADTEST_TRACE_TRACE_INTERNAL_H_

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "trace/trace.h"

namespace krul::loadtest::internal {

// One line of a text file: 1-based number, content without "\n" or "\r\n".
struct Line {
  int number = 0;
  std::string_view text;
};
// Every line; a last line without a newline counts, an empty tail does not.
std::vector<Line> SplitLines(std::string_view text);

// The 1-based line of byte `offset` in `text`.
int LineOfOffset(std::string_view text, size_t offset);

// For a JSON array at the top of `text`: the 1-based line where each
// element starts (strings and nesting skipped). Empty when `text` is not an
// array; stops early at malformed input (the JSON parser reports that).
std::vector<int> ArrayElementLines(std::string_view text);

// Parses `text` as one JSON value without throwing. On failure returns a
// discarded value, sets *error to "not valid JSON: <the parser's message>"
// and *error_offset (when given) to the byte where parsing failed (0 for a
// number beyond a double, e.g. 1e400, which the parser reports without one).
nlohmann::json ParseJson(std::string_view text, std::string* error, size_t* error_offset = nullptr);

// The bad-record policy: Bad() fails under kFail and counts and remembers
// the record under kSkip.
class BadRecords {
 public:
  BadRecords(const std::string& path, const TraceOptions& options, Trace* trace)
      : path_(path), options_(options), trace_(trace) {}

  // "PATH:LINE: field 'FIELD': MESSAGE" (no field part when `field` is
  // empty). INVALID_ARGUMENT under kFail, else OK after counting.
  absl::Status Bad(int line, std::string_view field, std::string_view message);

  std::string Where(int line) const;

 private:
  const std::string& path_;
  const TraceOptions& options_;
  Trace* trace_;
};

// The JSON type of `v` for messages ("string", "number", ...).
std::string TypeOf(const nlohmann::json& v);

// A non-negative integer field; false when absent, not an integer or negative
// (then *problem says which).
bool ReadCount(const nlohmann::json& object, const char* field, int64_t* out, std::string* problem);

}  // namespace krul::loadtest::internal

#endif  // KRUL_LOADTEST_TRACE_TRACE_INTERNAL_H_
