// Mooncake JSONL traces (trace.h has the format and the next-turn rule).
#include <algorithm>
#include <map>
#include <memory>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "trace/trace.h"
#include "trace/trace_internal.h"

namespace krul::loadtest {
namespace {

using internal::BadRecords;
using nlohmann::json;

// A trie over hash-id paths: one node per distinct block prefix seen.
class PrefixTrie {
 public:
  PrefixTrie() : nodes_(1) {}

  struct Match {
    int common_blocks = 0;  // blocks of the path already in the trie
    int owner = -1;         // request owning the deepest registered prefix
    int owner_blocks = 0;   // that prefix's length
  };

  // Follows `ids` as far as the trie goes, stopping before the last id (a
  // continuation must add at least one block).
  Match Follow(const std::vector<uint64_t>& ids) const {
    Match m;
    int node = 0;
    for (size_t k = 0; k < ids.size(); ++k) {
      auto it = nodes_[node].children.find(ids[k]);
      if (it == nodes_[node].children.end()) break;
      node = it->second;
      m.common_blocks = static_cast<int>(k) + 1;
      if (k + 1 < ids.size() && nodes_[node].owner >= 0) {
        m.owner = nodes_[node].owner;
        m.owner_blocks = static_cast<int>(k) + 1;
      }
    }
    return m;
  }

  // Adds the path and makes `owner` the owner of its first `owned_blocks`
  // blocks' node (0: no owner).
  void Insert(const std::vector<uint64_t>& ids, int owned_blocks, int owner) {
    int node = 0;
    for (size_t k = 0; k < ids.size(); ++k) {
      auto [it, inserted] = nodes_[node].children.try_emplace(ids[k], 0);
      if (inserted) {
        it->second = static_cast<int>(nodes_.size());
        nodes_.emplace_back();
      }
      node = it->second;
      if (static_cast<int>(k) + 1 == owned_blocks) nodes_[node].owner = owner;
    }
  }

 private:
  struct Node {
    std::unordered_map<uint64_t, int> children;
    int owner = -1;
  };
  std::vector<Node> nodes_;
};

struct Record {
  double timestamp = 0;
  int64_t input = 0;
  int64_t output = 0;
  std::vector<uint64_t> ids;
  int line = 0;
  int index = 0;
};

// Reads one record; an empty optional after reporting a bad one.
absl::StatusOr<std::optional<Record>> ReadRecord(const internal::Line& line, int index,
                                                 BadRecords& bad) {
  std::string error;
  json j = internal::ParseJson(line.text, &error);
  if (j.is_discarded()) {
    if (auto s = bad.Bad(line.number, "", error); !s.ok()) return s;
    return std::nullopt;
  }
  if (!j.is_object()) {
    if (auto s =
            bad.Bad(line.number, "", "a record must be a JSON object, got " + internal::TypeOf(j));
        !s.ok()) {
      return s;
    }
    return std::nullopt;
  }
  Record r;
  r.line = line.number;
  r.index = index;
  std::string problem;
  auto fail = [&](const char* field,
                  const std::string& message) -> absl::StatusOr<std::optional<Record>> {
    if (auto s = bad.Bad(line.number, field, message); !s.ok()) return s;
    return std::nullopt;
  };
  auto ts = j.find("timestamp");
  if (ts == j.end()) return fail("timestamp", "missing");
  if (!ts->is_number() || ts->get<double>() < 0) {
    return fail("timestamp", "must be a non-negative number of milliseconds, got " + ts->dump());
  }
  r.timestamp = ts->get<double>();
  if (!internal::ReadCount(j, "input_length", &r.input, &problem)) {
    return fail("input_length", problem);
  }
  if (r.input < 1) return fail("input_length", "must be at least 1");
  if (r.input > (int64_t{1} << 30)) return fail("input_length", "is implausibly large");
  if (!internal::ReadCount(j, "output_length", &r.output, &problem)) {
    return fail("output_length", problem);
  }
  if (r.output > (int64_t{1} << 30)) return fail("output_length", "is implausibly large");
  auto ids = j.find("hash_ids");
  if (ids == j.end()) return fail("hash_ids", "missing");
  if (!ids->is_array()) return fail("hash_ids", "must be an array, got " + internal::TypeOf(*ids));
  for (size_t k = 0; k < ids->size(); ++k) {
    const json& id = (*ids)[k];
    if (!id.is_number_integer() ||
        (id.is_number_integer() && !id.is_number_unsigned() && id.get<int64_t>() < 0)) {
      return fail("hash_ids",
                  absl::StrCat("element ", k, " must be a non-negative integer, got ", id.dump()));
    }
    r.ids.push_back(id.get<uint64_t>());
  }
  const int64_t blocks = (r.input + kMooncakeBlockTokens - 1) / kMooncakeBlockTokens;
  if (static_cast<int64_t>(r.ids.size()) != blocks) {
    return fail("hash_ids",
                absl::StrCat("has ", r.ids.size(), " blocks; input_length ", r.input, " needs ",
                             blocks, " blocks of ", kMooncakeBlockTokens, " tokens"));
  }
  return std::optional<Record>(std::move(r));
}

// Blocks [from, end) of `r` with their token counts (the last one partial).
std::vector<PromptBlock> BlocksFrom(const Record& r, int from) {
  std::vector<PromptBlock> blocks;
  const int n = static_cast<int>(r.ids.size());
  for (int k = from; k < n; ++k) {
    const int tokens = k + 1 < n ? kMooncakeBlockTokens
                                 : static_cast<int>(r.input - int64_t{kMooncakeBlockTokens} * k);
    blocks.push_back({r.ids[k], tokens});
  }
  return blocks;
}

}  // namespace

absl::StatusOr<Trace> ParseMooncake(std::string_view text, const std::string& path,
                                    const TraceOptions& options) {
  Trace trace;
  trace.format = TraceFormat::kMooncake;
  trace.path = path;
  BadRecords bad(path, options, &trace);

  std::vector<Record> records;
  for (const internal::Line& line : internal::SplitLines(text)) {
    if (line.text.find_first_not_of(" \t") == std::string_view::npos) continue;
    const int index = trace.records++;
    auto r = ReadRecord(line, index, bad);
    if (!r.ok()) return r.status();
    if (r->has_value()) records.push_back(**std::move(r));
  }
  if (records.empty()) return trace;
  double t0 = records.front().timestamp;
  for (const Record& r : records) t0 = std::min(t0, r.timestamp);

  PrefixTrie trie;
  // For each record kept (by position in `records`): its conversation and
  // whether it is that conversation's last turn so far.
  std::vector<int> conversation_of(records.size(), -1);
  std::vector<int> turn_of(records.size(), -1);
  for (size_t i = 0; i < records.size(); ++i) {
    const Record& r = records[i];
    const PrefixTrie::Match m = trie.Follow(r.ids);
    const int full_blocks = static_cast<int>(r.input / kMooncakeBlockTokens);
    Turn turn;
    turn.input_tokens = static_cast<int>(r.input);
    turn.output_tokens = static_cast<int>(r.output);
    turn.arrival_ms = r.timestamp - t0;
    turn.line = r.line;
    turn.record = r.index;
    int parent = m.owner;  // position in `records`
    if (parent >= 0) {
      const int c = conversation_of[parent];
      // A second continuation of the same request (a branch) cannot reuse
      // that conversation's history: it starts a conversation of its own.
      if (trace.conversations[c].turns.size() != static_cast<size_t>(turn_of[parent] + 1)) {
        parent = -1;
      }
    }
    if (parent >= 0) {
      const Record& a = records[parent];
      turn.blocks = BlocksFrom(r, m.owner_blocks);
      int64_t added = r.input - a.input - a.output;
      int64_t available = 0;
      for (const PromptBlock& b : turn.blocks) available += b.tokens;
      turn.message_tokens = static_cast<int>(std::clamp<int64_t>(added, 1, available));
      const int c = conversation_of[parent];
      conversation_of[i] = c;
      turn_of[i] = static_cast<int>(trace.conversations[c].turns.size());
      trace.conversations[c].turns.push_back(std::move(turn));
    } else {
      turn.blocks = BlocksFrom(r, 0);
      turn.message_tokens = static_cast<int>(r.input);
      Conversation conversation;
      conversation.id = absl::StrCat("mooncake-", r.index);
      conversation.turns.push_back(std::move(turn));
      conversation_of[i] = static_cast<int>(trace.conversations.size());
      turn_of[i] = 0;
      trace.conversations.push_back(std::move(conversation));
    }
    // Only a request that says more than what other conversations already
    // share may be continued (trace.h).
    const bool owns = full_blocks >= 1 && (m.owner >= 0 || full_blocks > m.common_blocks);
    trie.Insert(r.ids, owns ? full_blocks : 0, static_cast<int>(i));
  }
  // Conversations were opened in file order; order them by first arrival.
  std::stable_sort(trace.conversations.begin(), trace.conversations.end(),
                   [](const Conversation& a, const Conversation& b) {
                     return *a.turns.front().arrival_ms < *b.turns.front().arrival_ms;
                   });
  return trace;
}

}  // namespace krul::loadtest
