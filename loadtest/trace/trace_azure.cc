// Azure LLM inference trace CSV: TIMESTAMP,ContextTokens,GeneratedTokens.
#include <algorithm>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "trace/trace.h"
#include "trace/trace_internal.h"
#include "worker/api/string_view_conversion.h"

namespace krul::loadtest {
namespace {

// Azure rows share no prefix: every request's blocks get ids of their own,
// far from Mooncake-sized hash ids.
constexpr uint64_t kAzureBlockIdBase = uint64_t{1} << 48;

absl::string_view AV(std::string_view s) { return worker::ToAbslStringView(s); }

}  // namespace

absl::StatusOr<Trace> ParseAzure(std::string_view text, const std::string& path,
                                 const TraceOptions& options) {
  Trace trace;
  trace.format = TraceFormat::kAzure;
  trace.path = path;
  internal::BadRecords bad(path, options, &trace);
  const std::vector<internal::Line> lines = internal::SplitLines(text);
  if (lines.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(bad.Where(1),
                                                   ": empty file; expected the "
                                                   "header TIMESTAMP,ContextTokens,"
                                                   "GeneratedTokens"));
  }
  // The header names the columns; their order is free.
  std::vector<std::string> header = absl::StrSplit(AV(lines[0].text), ',');
  int col_time = -1, col_context = -1, col_generated = -1;
  for (size_t i = 0; i < header.size(); ++i) {
    const std::string name(absl::StripAsciiWhitespace(header[i]));
    if (name == "TIMESTAMP") col_time = static_cast<int>(i);
    if (name == "ContextTokens") col_context = static_cast<int>(i);
    if (name == "GeneratedTokens") col_generated = static_cast<int>(i);
  }
  if (col_time < 0 || col_context < 0 || col_generated < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(bad.Where(1), ": the header '", std::string(lines[0].text),
                     "' lacks one of TIMESTAMP, ContextTokens, GeneratedTokens"));
  }

  struct Row {
    absl::Time time;
    int64_t context = 0;
    int64_t generated = 0;
    int line = 0;
    int record = 0;
  };
  std::vector<Row> rows;
  for (size_t l = 1; l < lines.size(); ++l) {
    const internal::Line& line = lines[l];
    if (absl::StripAsciiWhitespace(AV(line.text)).empty()) continue;
    const int record = trace.records++;
    std::vector<absl::string_view> cells = absl::StrSplit(AV(line.text), ',');
    if (cells.size() != header.size()) {
      if (auto s = bad.Bad(
              line.number, "",
              absl::StrCat("has ", cells.size(), " fields; the header has ", header.size()));
          !s.ok()) {
        return s;
      }
      continue;
    }
    Row row;
    row.line = line.number;
    row.record = record;
    const std::string stamp(absl::StripAsciiWhitespace(cells[col_time]));
    std::string error;
    if (!absl::ParseTime("%Y-%m-%d %H:%M:%E*S", stamp, absl::UTCTimeZone(), &row.time, &error)) {
      if (auto s = bad.Bad(
              line.number, "TIMESTAMP",
              absl::StrCat("'", stamp, "' is not YYYY-MM-DD HH:MM:SS[.fraction] (", error, ")"));
          !s.ok()) {
        return s;
      }
      continue;
    }
    auto count = [&](int col, const char* field, int64_t* out, int64_t least) -> absl::Status {
      const std::string cell(absl::StripAsciiWhitespace(cells[col]));
      if (!absl::SimpleAtoi(cell, out) || *out < least || *out > (int64_t{1} << 30)) {
        return bad.Bad(line.number, field,
                       absl::StrCat("'", cell, "' is not an integer in [", least, ", 2^30]"));
      }
      return absl::OkStatus();
    };
    const int skipped_before = trace.skipped;
    if (auto s = count(col_context, "ContextTokens", &row.context, 1); !s.ok()) return s;
    if (trace.skipped != skipped_before) continue;
    if (auto s = count(col_generated, "GeneratedTokens", &row.generated, 0); !s.ok()) return s;
    if (trace.skipped != skipped_before) continue;
    rows.push_back(row);
  }
  if (rows.empty()) return trace;
  absl::Time t0 = rows.front().time;
  for (const Row& r : rows) t0 = std::min(t0, r.time);
  for (const Row& r : rows) {
    Turn turn;
    const int64_t n_blocks = (r.context + kMooncakeBlockTokens - 1) / kMooncakeBlockTokens;
    for (int64_t k = 0; k < n_blocks; ++k) {
      const int tokens = k + 1 < n_blocks ? kMooncakeBlockTokens
                                          : static_cast<int>(r.context - kMooncakeBlockTokens * k);
      turn.blocks.push_back(
          {kAzureBlockIdBase + (static_cast<uint64_t>(r.record) << 16) + static_cast<uint64_t>(k),
           tokens});
    }
    turn.message_tokens = static_cast<int>(r.context);
    turn.input_tokens = static_cast<int>(r.context);
    turn.output_tokens = static_cast<int>(r.generated);
    turn.arrival_ms = absl::ToDoubleMilliseconds(r.time - t0);
    turn.line = r.line;
    turn.record = r.record;
    Conversation conversation;
    conversation.id = absl::StrCat("azure-", r.record);
    conversation.turns.push_back(std::move(turn));
    trace.conversations.push_back(std::move(conversation));
  }
  std::stable_sort(trace.conversations.begin(), trace.conversations.end(),
                   [](const Conversation& a, const Conversation& b) {
                     return *a.turns.front().arrival_ms < *b.turns.front().arrival_ms;
                   });
  return trace;
}

}  // namespace krul::loadtest
