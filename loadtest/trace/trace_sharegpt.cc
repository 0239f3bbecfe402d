// ShareGPT-style JSON: an array of conversations (trace.h). Also reads the
// OpenAI-style variant {"messages": [{"role", "content"}]}.
#include <set>

#include "absl/strings/str_cat.h"
#include "trace/trace.h"
#include "trace/trace_internal.h"

namespace krul::loadtest {
namespace {

using internal::BadRecords;
using nlohmann::json;

enum class Speaker { kUser, kAssistant, kSystem, kUnknown };

Speaker SpeakerOf(const std::string& name) {
  if (name == "human" || name == "user") return Speaker::kUser;
  if (name == "gpt" || name == "assistant" || name == "chatgpt" || name == "bard" ||
      name == "bing" || name == "model") {
    return Speaker::kAssistant;
  }
  if (name == "system") return Speaker::kSystem;
  return Speaker::kUnknown;
}

// Reads element `index` (starting on `line`) into *out; false after
// reporting a bad record.
absl::StatusOr<bool> ReadConversation(const json& c, int index, int line, BadRecords& bad,
                                      Conversation* out) {
  auto fail = [&](const std::string& field, const std::string& message) -> absl::StatusOr<bool> {
    if (auto s = bad.Bad(line, field, absl::StrCat(message, " (conversation ", index, ")"));
        !s.ok()) {
      return s;
    }
    return false;
  };
  if (!c.is_object())
    return fail("", "a conversation must be a JSON object, got " + internal::TypeOf(c));
  if (auto it = c.find("id"); it != c.end() && !it->is_null()) {
    if (it->is_string()) {
      out->id = it->get<std::string>();
    } else if (it->is_number_integer()) {
      out->id = it->dump();
    } else {
      return fail("id", "must be a string or an integer, got " + internal::TypeOf(*it));
    }
  }
  if (out->id.empty()) out->id = absl::StrCat("conversation-", index);
  if (auto it = c.find("domain"); it != c.end() && !it->is_null()) {
    if (!it->is_string()) return fail("domain", "must be a string, got " + internal::TypeOf(*it));
    out->domain = it->get<std::string>();
  }
  // ShareGPT's {from, value}, or OpenAI's {role, content}.
  const char* list_field = c.contains("conversations") ? "conversations" : "messages";
  const char* speaker_field = c.contains("conversations") ? "from" : "role";
  const char* text_field = c.contains("conversations") ? "value" : "content";
  auto list = c.find(list_field);
  if (list == c.end()) return fail("conversations", "missing");
  if (!list->is_array()) {
    return fail(list_field, "must be an array, got " + internal::TypeOf(*list));
  }
  for (size_t m = 0; m < list->size(); ++m) {
    const json& message = (*list)[m];
    const std::string where = absl::StrCat(list_field, "[", m, "]");
    if (!message.is_object()) {
      return fail(where, "must be an object, got " + internal::TypeOf(message));
    }
    auto speaker = message.find(speaker_field);
    if (speaker == message.end() || !speaker->is_string()) {
      return fail(absl::StrCat(where, ".", speaker_field), "missing or not a string");
    }
    auto text = message.find(text_field);
    if (text == message.end() || !text->is_string()) {
      return fail(absl::StrCat(where, ".", text_field), "missing or not a string");
    }
    switch (SpeakerOf(speaker->get<std::string>())) {
      case Speaker::kUser: {
        Turn turn;
        turn.text = text->get<std::string>();
        turn.line = line;
        if (turn.text.empty()) return fail(absl::StrCat(where, ".", text_field), "is empty");
        out->turns.push_back(std::move(turn));
        break;
      }
      case Speaker::kAssistant:
      case Speaker::kSystem:
        break;  // the model answers for itself; system prompts are not replayed
      case Speaker::kUnknown:
        return fail(absl::StrCat(where, ".", speaker_field),
                    absl::StrCat("unknown speaker '", speaker->get<std::string>(),
                                 "'; expected human/user, gpt/assistant or system"));
    }
  }
  if (out->turns.empty()) return fail(list_field, "has no human turn");
  return true;
}

}  // namespace

absl::StatusOr<Trace> ParseShareGpt(std::string_view text, const std::string& path,
                                    const TraceOptions& options) {
  Trace trace;
  trace.format = TraceFormat::kShareGpt;
  trace.path = path;
  BadRecords bad(path, options, &trace);
  std::string error;
  size_t offset = 0;
  json root = internal::ParseJson(text, &error, &offset);
  if (root.is_discarded()) {
    // A broken file cannot be skipped record by record.
    return absl::InvalidArgumentError(
        absl::StrCat(bad.Where(internal::LineOfOffset(text, offset)), ": ", error));
  }
  if (!root.is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(
        bad.Where(1), ": expected a JSON array of conversations, got ", internal::TypeOf(root)));
  }
  const std::vector<int> lines = internal::ArrayElementLines(text);
  std::set<std::string> ids;
  for (size_t i = 0; i < root.size(); ++i) {
    const int line = i < lines.size() ? lines[i] : 1;
    ++trace.records;
    Conversation conversation;
    auto ok = ReadConversation(root[i], static_cast<int>(i), line, bad, &conversation);
    if (!ok.ok()) return ok.status();
    if (!*ok) continue;
    // Ids name conversations on the workers: they must not collide.
    std::string id = conversation.id;
    for (int k = 2; !ids.insert(id).second; ++k) id = absl::StrCat(conversation.id, "#", k);
    conversation.id = std::move(id);
    trace.conversations.push_back(std::move(conversation));
  }
  return trace;
}

}  // namespace krul::loadtest
