// Multi-turn conversation files for the quality benchmarks: a ShareGPT-style
// JSON array ({"conversations": [{"from": "human"|"gpt", "value": ...}]},
// replayed with its answers) or MT-bench JSONL ({"turns": [...]}, user turns
// only: the caller generates the answers).
#ifndef KRUL_BENCH_KRUL_CONVERSATIONS_H_
#define KRUL_BENCH_KRUL_CONVERSATIONS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace krul::bench {

struct Turn {
  std::string user;
  std::string answer;  // empty: to be generated
  std::vector<int> prompt_tokens;
  std::vector<int> answer_tokens;
};

struct Conversation {
  std::string id;
  // The record's "domain" field (krul_mix_conversations.json), else the
  // file's name without directory and extension.
  std::string domain;
  std::vector<Turn> turns;
};

// One file. NOT_FOUND when it cannot be opened; INVALID_ARGUMENT when it is
// not valid JSON / JSONL or holds no conversation.
absl::StatusOr<std::vector<Conversation>> LoadConversations(const std::string& path);

// Comma-separated files, concatenated in order (one mixed population), at
// most `max_per_file` conversations of each (0 = all). Errors of
// LoadConversations; INVALID_ARGUMENT for an empty list.
absl::StatusOr<std::vector<Conversation>> LoadConversationFiles(const std::string& paths,
                                                                int max_per_file);

// The prompt then the answer tokens of a turn.
std::vector<int> TurnTokens(const Turn& turn);

// log-softmax of `logits`, in double precision.
std::vector<double> LogSoftmax(const std::vector<float>& logits);

// KL(p || q) of two log-probability vectors of equal length, clamped at 0
// (rounding can make a near-zero divergence slightly negative).
double KlDivergence(const std::vector<double>& log_p, const std::vector<double>& log_q);

}  // namespace krul::bench

#endif  // KRUL_BENCH_KRUL_CONVERSATIONS_H_
