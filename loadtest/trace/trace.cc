#include "trace/trace.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "trace/trace_internal.h"

namespace krul::loadtest {

using nlohmann::json;

std::string_view TraceFormatName(TraceFormat format) {
  switch (format) {
    case TraceFormat::kAuto:
      return "auto";
    case TraceFormat::kMooncake:
      return "mooncake";
    case TraceFormat::kShareGpt:
      return "sharegpt";
    case TraceFormat::kMtBench:
      return "mtbench";
    case TraceFormat::kAzure:
      return "azure";
  }
  return "unknown";
}

absl::StatusOr<TraceFormat> ParseTraceFormat(std::string_view name) {
  for (TraceFormat f : {TraceFormat::kAuto, TraceFormat::kMooncake, TraceFormat::kShareGpt,
                        TraceFormat::kMtBench, TraceFormat::kAzure}) {
    if (name == TraceFormatName(f)) return f;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown trace format '", std::string(name),
                                                 "'; expected auto, mooncake, sharegpt, mtbench "
                                                 "or azure"));
}

absl::StatusOr<BadRecordPolicy> ParseBadRecordPolicy(std::string_view name) {
  if (name == "fail") return BadRecordPolicy::kFail;
  if (name == "skip") return BadRecordPolicy::kSkip;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown bad-record policy '", std::string(name), "'; expected fail or skip"));
}

int Trace::turns() const {
  int n = 0;
  for (const Conversation& c : conversations) n += static_cast<int>(c.turns.size());
  return n;
}

bool Trace::timed() const {
  if (conversations.empty()) return false;
  for (const Conversation& c : conversations) {
    for (const Turn& t : c.turns) {
      if (!t.arrival_ms.has_value()) return false;
    }
  }
  return true;
}

absl::StatusOr<TraceFormat> DetectTraceFormat(std::string_view text, const std::string& path) {
  std::string lower = absl::AsciiStrToLower(path);
  if (absl::EndsWith(lower, ".csv")) return TraceFormat::kAzure;
  size_t start = 0;
  while (start < text.size() && absl::ascii_isspace(static_cast<unsigned char>(text[start]))) {
    ++start;
  }
  if (start < text.size() && text[start] == '[') return TraceFormat::kShareGpt;
  if (start < text.size() && text[start] == '{') {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string error;
    json first = internal::ParseJson(text.substr(start, end - start), &error);
    if (first.is_object() && first.contains("hash_ids")) return TraceFormat::kMooncake;
    if (first.is_object() && first.contains("turns")) return TraceFormat::kMtBench;
  }
  if (text.substr(start).rfind("TIMESTAMP", 0) == 0) return TraceFormat::kAzure;
  return absl::InvalidArgumentError(
      absl::StrCat(path,
                   ": cannot tell the trace format (expected a .csv file, a JSON array of "
                   "conversations, or JSONL with hash_ids or turns); pass --format"));
}

absl::StatusOr<Trace> LoadTrace(const std::string& path, TraceFormat format,
                                const TraceOptions& options) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open trace file ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  if (format == TraceFormat::kAuto) {
    auto detected = DetectTraceFormat(text, path);
    if (!detected.ok()) return detected.status();
    format = *detected;
  }
  absl::StatusOr<Trace> trace;
  switch (format) {
    case TraceFormat::kMooncake:
      trace = ParseMooncake(text, path, options);
      break;
    case TraceFormat::kShareGpt:
      trace = ParseShareGpt(text, path, options);
      break;
    case TraceFormat::kMtBench:
      trace = ParseMtBench(text, path, options);
      break;
    case TraceFormat::kAzure:
      trace = ParseAzure(text, path, options);
      break;
    case TraceFormat::kAuto:
      return absl::InternalError("unreachable");
  }
  if (!trace.ok()) return trace.status();
  if (trace->conversations.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no usable record (", trace->records,
                                                   " read, ", trace->skipped, " skipped)"));
  }
  return trace;
}

namespace internal {

std::vector<Line> SplitLines(std::string_view text) {
  std::vector<Line> lines;
  size_t pos = 0;
  int number = 1;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    const bool last = end == std::string_view::npos;
    if (last) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back({number++, line});
    if (last) break;
    pos = end + 1;
  }
  return lines;
}

int LineOfOffset(std::string_view text, size_t offset) {
  offset = std::min(offset, text.size());
  int line = 1;
  for (size_t i = 0; i < offset; ++i) line += text[i] == '\n';
  return line;
}

std::vector<int> ArrayElementLines(std::string_view text) {
  std::vector<int> lines;
  size_t i = 0;
  int line = 1;
  auto skip_space = [&] {
    while (i < text.size() && absl::ascii_isspace(static_cast<unsigned char>(text[i]))) {
      line += text[i] == '\n';
      ++i;
    }
  };
  skip_space();
  if (i >= text.size() || text[i] != '[') return lines;
  ++i;
  int depth = 0;  // nesting inside the current element
  bool expect_element = true;
  while (i < text.size()) {
    const char c = text[i];
    if (c == '\n') ++line;
    if (depth == 0 && expect_element && !absl::ascii_isspace(static_cast<unsigned char>(c))) {
      if (c == ']') break;
      lines.push_back(line);
      expect_element = false;
    }
    if (c == '"') {
      // Skip the string, escapes included; strings hold no raw newlines.
      for (++i; i < text.size() && text[i] != '"'; ++i) {
        if (text[i] == '\\') ++i;
      }
    } else if (c == '[' || c == '{') {
      ++depth;
    } else if (c == ']' || c == '}') {
      if (depth == 0) break;  // the end of the top-level array
      --depth;
    } else if (c == ',' && depth == 0) {
      expect_element = true;
    }
    ++i;
  }
  return lines;
}

json ParseJson(std::string_view text, std::string* error, size_t* error_offset) {
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::parse_error& e) {
    std::string what = e.what();
    // Drop the "[json.exception.parse_error.101] " prefix.
    if (size_t p = what.find("] "); p != std::string::npos) what = what.substr(p + 2);
    *error = absl::StrCat("not valid JSON: ", what);
    if (error_offset != nullptr) *error_offset = e.byte > 0 ? e.byte - 1 : 0;
    return json(json::value_t::discarded);
  } catch (const json::exception& e) {
    // Not a syntax error but a value the parser cannot hold (out_of_range
    // 406: a number such as 1e400 beyond a double). It carries no byte
    // position; the message names the number.
    std::string what = e.what();
    if (size_t p = what.find("] "); p != std::string::npos) what = what.substr(p + 2);
    *error = absl::StrCat("not valid JSON: ", what);
    if (error_offset != nullptr) *error_offset = 0;
    return json(json::value_t::discarded);
  }
}

std::string BadRecords::Where(int line) const { return absl::StrCat(path_, ":", line); }

absl::Status BadRecords::Bad(int line, std::string_view field, std::string_view message) {
  std::string text = field.empty() ? absl::StrCat(Where(line), ": ", std::string(message))
                                   : absl::StrCat(Where(line), ": field '", std::string(field),
                                                  "': ", std::string(message));
  if (options_.on_bad_record == BadRecordPolicy::kFail) {
    return absl::InvalidArgumentError(text);
  }
  ++trace_->skipped;
  if (static_cast<int>(trace_->skip_messages.size()) < Trace::kMaxSkipMessages) {
    trace_->skip_messages.push_back(std::move(text));
  }
  return absl::OkStatus();
}

std::string TypeOf(const json& v) { return v.type_name(); }

bool ReadCount(const json& object, const char* field, int64_t* out, std::string* problem) {
  auto it = object.find(field);
  if (it == object.end()) {
    *problem = "missing";
    return false;
  }
  if (it->is_number_unsigned()) {
    *out = static_cast<int64_t>(std::min<uint64_t>(it->get<uint64_t>(), INT64_MAX));
    return true;
  }
  if (it->is_number_integer()) {
    *out = it->get<int64_t>();
    if (*out < 0) {
      *problem = absl::StrCat("must not be negative, got ", *out);
      return false;
    }
    return true;
  }
  if (it->is_number_float()) {
    const double v = it->get<double>();
    // Range first: converting a double beyond int64 (3e22) is undefined.
    if (v >= 0 && v < 0x1p63 && v == std::floor(v)) {
      *out = static_cast<int64_t>(v);
      return true;
    }
  }
  *problem = absl::StrCat("must be a non-negative integer, got ", TypeOf(*it), " ", it->dump());
  return false;
}

}  // namespace internal
}  // namespace krul::loadtest
