// Traces that krul-loadtest replays, read into one shape: conversations made
// of user turns. Turn k+1 of a conversation is sent after turn k's answer,
// with that answer in its history.
//
// Formats (samples in $KRUL_DATA_DIR/traces and $KRUL_DATA_DIR/conversations):
//   mooncake  JSONL {timestamp (ms), input_length, output_length, hash_ids}:
//             hash_ids name the prompt's 512-token blocks; equal ids are
//             equal content. Prompts are synthesized from the blocks
//             (prompt_synth.h), so requests that share a hash_ids prefix
//             share identical text. A request whose blocks continue an
//             earlier one's is that conversation's next turn (ParseMooncake).
//   sharegpt  JSON array of {id, conversations: [{from, value}], domain?}
//             (ShareGPT, FastChat, and the multi-turn conversation files
//             krul_*_conversations.json with their "domain"); the human
//             turns are sent, the file's own answers are not.
//   mtbench   JSONL {question_id, category, turns: [text, ...]}.
//   azure     CSV TIMESTAMP,ContextTokens,GeneratedTokens (Azure LLM
//             inference trace; CRLF and a missing final newline are fine):
//             one single-turn conversation per row, prompt synthesized.
//
// Every parser reports a bad record as INVALID_ARGUMENT "FILE:LINE: field
// 'NAME': problem" (FILE:LINE: problem when no one field is to blame). With
// BadRecordPolicy::kSkip such records are counted, their messages kept, and
// the rest of the file is read.
//
// Thread-safe (pure functions over values).
#ifndef KRUL_LOADTEST_TRACE_TRACE_H_
#define KRUL_LOADTEST_TRACE_TRACE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace krul::loadtest {

enum class TraceFormat { kAuto, kMooncake, kShareGpt, kMtBench, kAzure };

// "auto", "mooncake", "sharegpt", "mtbench", "azure".
std::string_view TraceFormatName(TraceFormat format);
// Inverse of TraceFormatName. INVALID_ARGUMENT listing the names otherwise.
absl::StatusOr<TraceFormat> ParseTraceFormat(std::string_view name);

enum class BadRecordPolicy { kFail, kSkip };
// "fail" or "skip"; INVALID_ARGUMENT otherwise.
absl::StatusOr<BadRecordPolicy> ParseBadRecordPolicy(std::string_view name);

// The tokens of a Mooncake hash block (the last block of a prompt may be
// shorter).
inline constexpr int kMooncakeBlockTokens = 512;

// A block of a synthesized prompt. Equal ids are equal text.
struct PromptBlock {
  uint64_t id = 0;
  int tokens = 0;  // in the trace's own tokens (before any length scaling)

  friend bool operator==(const PromptBlock&, const PromptBlock&) = default;
};

// One user turn (one request).
struct Turn {
  // Real text (sharegpt, mtbench). Empty when the message is synthesized.
  std::string text;
  // Synthesized message (mooncake, azure): the first `message_tokens` tokens
  // of these blocks, in order.
  std::vector<PromptBlock> blocks;
  int message_tokens = 0;
  // The whole prompt and the answer as the trace gives them, in the trace's
  // tokens; 0 = not given.
  int input_tokens = 0;
  int output_tokens = 0;
  // When the trace sends it, relative to the trace's first request.
  std::optional<double> arrival_ms;
  int line = 0;     // 1-based line of the record in the file
  int record = -1;  // 0-based record index (mooncake, azure), else -1

  bool synthesized() const { return !blocks.empty(); }
};

struct Conversation {
  std::string id;      // unique within the trace
  std::string domain;  // "domain" field or MT-bench category; may be empty
  std::vector<Turn> turns;
};

struct Trace {
  TraceFormat format = TraceFormat::kAuto;
  std::string path;
  // In order of first arrival for timed traces, else in file order.
  std::vector<Conversation> conversations;
  int records = 0;                         // records read, skipped ones included
  int skipped = 0;                         // bad records left out (BadRecordPolicy::kSkip)
  std::vector<std::string> skip_messages;  // the first kMaxSkipMessages

  static constexpr int kMaxSkipMessages = 20;

  int turns() const;
  // Whether every turn has an arrival time (open loop at trace time).
  bool timed() const;
};

struct TraceOptions {
  BadRecordPolicy on_bad_record = BadRecordPolicy::kFail;
};

// Reads `path` in `format` (kAuto: DetectTraceFormat). NOT_FOUND when the
// file cannot be read; INVALID_ARGUMENT for a bad record under kFail, a
// file that is not in the format, or a file with no usable record.
absl::StatusOr<Trace> LoadTrace(const std::string& path, TraceFormat format,
                                const TraceOptions& options);

// The format of `text` read from `path`: .csv -> azure; a JSON array ->
// sharegpt; JSONL whose first record has hash_ids -> mooncake, turns ->
// mtbench. INVALID_ARGUMENT when none fits.
absl::StatusOr<TraceFormat> DetectTraceFormat(std::string_view text, const std::string& path);

// The parsers behind LoadTrace; `path` only names the file in messages.
//
// Mooncake next turns: request B continues the most recent earlier request A
// whose complete 512-token blocks all begin B's blocks, B having more blocks
// than that. A's partial last block is left out of the match because the
// next turn re-hashes it with more text. A request whose complete blocks
// were all seen before in other conversations (a shared system prompt or
// document) starts no conversation of its own that others could continue;
// without this rule block 0, which every request of the conversation trace
// shares, would chain the whole trace into one conversation. The next
// turn's message is its blocks past A's complete ones, `message_tokens` =
// input_length(B) - input_length(A) - output_length(A) (what B adds beyond
// A's prompt and answer), at least 1.
absl::StatusOr<Trace> ParseMooncake(std::string_view text, const std::string& path,
                                    const TraceOptions& options);
absl::StatusOr<Trace> ParseShareGpt(std::string_view text, const std::string& path,
                                    const TraceOptions& options);
absl::StatusOr<Trace> ParseMtBench(std::string_view text, const std::string& path,
                                   const TraceOptions& options);
absl::StatusOr<Trace> ParseAzure(std::string_view text, const std::string& path,
                                 const TraceOptions& options);

}  // namespace krul::loadtest

#endif  // KRUL_LOADTEST_TRACE_TRACE_H_
