// MT-bench question JSONL: {question_id, category, turns: [text, ...]}.
#include <set>

#include "absl/strings/str_cat.h"
#include "trace/trace.h"
#include "trace/trace_internal.h"

namespace krul::loadtest {

using nlohmann::json;

absl::StatusOr<Trace> ParseMtBench(std::string_view text, const std::string& path,
                                   const TraceOptions& options) {
  Trace trace;
  trace.format = TraceFormat::kMtBench;
  trace.path = path;
  internal::BadRecords bad(path, options, &trace);
  std::set<std::string> ids;
  for (const internal::Line& line : internal::SplitLines(text)) {
    if (line.text.find_first_not_of(" \t") == std::string_view::npos) continue;
    ++trace.records;
    auto skip = [&](const std::string& field, const std::string& message) {
      return bad.Bad(line.number, field, message);
    };
    std::string error;
    json q = internal::ParseJson(line.text, &error);
    if (q.is_discarded()) {
      if (auto s = skip("", error); !s.ok()) return s;
      continue;
    }
    if (!q.is_object()) {
      if (auto s = skip("", "a record must be a JSON object, got " + internal::TypeOf(q));
          !s.ok()) {
        return s;
      }
      continue;
    }
    Conversation conversation;
    auto id = q.find("question_id");
    if (id == q.end() || !(id->is_number_integer() || id->is_string())) {
      if (auto s = skip("question_id", "missing, or not an integer or string"); !s.ok()) return s;
      continue;
    }
    conversation.id =
        absl::StrCat("mtbench-", id->is_string() ? id->get<std::string>() : id->dump());
    if (!ids.insert(conversation.id).second) {
      if (auto s = skip("question_id", absl::StrCat("duplicate ", id->dump())); !s.ok()) return s;
      continue;
    }
    if (auto c = q.find("category"); c != q.end() && c->is_string()) {
      conversation.domain = c->get<std::string>();
    }
    auto turns = q.find("turns");
    if (turns == q.end() || !turns->is_array() || turns->empty()) {
      if (auto s = skip("turns", "missing, not an array, or empty"); !s.ok()) return s;
      continue;
    }
    bool good = true;
    for (size_t t = 0; t < turns->size() && good; ++t) {
      const json& turn_text = (*turns)[t];
      if (!turn_text.is_string() || turn_text.get<std::string>().empty()) {
        if (auto s = skip(absl::StrCat("turns[", t, "]"),
                          "must be a non-empty string, got " + turn_text.dump());
            !s.ok()) {
          return s;
        }
        good = false;
        break;
      }
      Turn turn;
      turn.text = turn_text.get<std::string>();
      turn.line = line.number;
      conversation.turns.push_back(std::move(turn));
    }
    if (good) trace.conversations.push_back(std::move(conversation));
  }
  return trace;
}

}  // namespace krul::loadtest
