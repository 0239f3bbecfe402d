#include "krul/model/tokenizer.h"

#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <queue>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "krul/base/file_util.h"

namespace krul {
namespace {

constexpr int kMaxVocab = 1 << 22;
constexpr int32_t kMaxPieceBytes = 1 << 16;

// The byte a piece of the form "<0xXX>" stands for, or -1.
int ByteOfPiece(const std::string& piece) {
  if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') return -1;
  int value = 0;
  for (int i = 3; i < 5; ++i) {
    char c = piece[i];
    int digit = (c >= '0' && c <= '9') ? c - '0' : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
    if (digit < 0) return -1;
    value = value * 16 + digit;
  }
  return value;
}

}  // namespace

absl::StatusOr<Tokenizer> Tokenizer::FromLlama2cFile(const std::string& path, int vocab_size) {
  if (vocab_size < 0 || vocab_size > kMaxVocab) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer vocab_size=", vocab_size, " is out of range [0, ", kMaxVocab, "]"));
  }
  auto file = internal::InputFile::Open(path);
  if (!file.ok()) return file.status();
  if (file->size() == 0) return absl::InvalidArgumentError(absl::StrCat(path, ": empty file"));
  int32_t max_token_length = 0;
  if (auto s = file->Read(&max_token_length, 4, "max_token_length"); !s.ok()) return s;
  if (max_token_length <= 0 || max_token_length > kMaxPieceBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": max_token_length=", max_token_length,
                     " is out of range; not a llama2.c tokenizer file?"));
  }
  Tokenizer tok;
  for (int id = 0; vocab_size == 0 ? file->remaining() > 0 : id < vocab_size; ++id) {
    if (id >= kMaxVocab) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": more than ", kMaxVocab, " tokens"));
    }
    float score;
    int32_t len;
    const std::string what = absl::StrCat("token ", id);
    if (auto s = file->Read(&score, 4, what.c_str()); !s.ok()) return s;
    if (auto s = file->Read(&len, 4, what.c_str()); !s.ok()) return s;
    if (len < 0 || len > max_token_length) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": token ", id, " has length ", len,
                       ", outside [0, max_token_length=", max_token_length, "]"));
    }
    if (!std::isfinite(score)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": token ", id, " has a non-finite score"));
    }
    std::string piece(static_cast<size_t>(len), '\0');
    if (auto s = file->Read(piece.data(), len, what.c_str()); !s.ok()) return s;
    tok.pieces_.push_back(std::move(piece));
    tok.scores_.push_back(score);
  }
  if (vocab_size == 0 && file->remaining() != 0) {
    return absl::DataLossError(absl::StrCat(path, ": trailing bytes after the last token"));
  }
  if (tok.pieces_.size() < 3) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": has ", tok.pieces_.size(),
                                                   " tokens; needs at least <unk>, BOS, EOS"));
  }
  if (auto s = tok.Index(); !s.ok()) return s;
  return tok;
}

absl::StatusOr<Tokenizer> Tokenizer::FromVocabulary(const Vocabulary& vocabulary) {
  const size_t n = vocabulary.pieces.size();
  if (n < 3 || n > static_cast<size_t>(kMaxVocab)) {
    return absl::InvalidArgumentError(absl::StrCat("vocabulary has ", n, " pieces"));
  }
  if (!vocabulary.scores.empty() && vocabulary.scores.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocabulary has ", n, " pieces but ", vocabulary.scores.size(), " scores"));
  }
  auto in_range = [n](int id) { return id >= 0 && static_cast<size_t>(id) < n; };
  if (!in_range(vocabulary.bos_id) || !in_range(vocabulary.eos_id)) {
    return absl::InvalidArgumentError(absl::StrCat("vocabulary BOS id ", vocabulary.bos_id,
                                                   " or EOS id ", vocabulary.eos_id,
                                                   " is out of range [0, ", n, ")"));
  }
  Tokenizer tok;
  tok.pieces_ = vocabulary.pieces;
  tok.scores_ = vocabulary.scores.empty() ? std::vector<float>(n, 0.0f) : vocabulary.scores;
  tok.bos_id_ = vocabulary.bos_id;
  tok.eos_id_ = vocabulary.eos_id;
  if (auto s = tok.Index(); !s.ok()) return s;
  return tok;
}

absl::StatusOr<Tokenizer> Tokenizer::ForModel(const Model& model, const std::string& llama2c_path) {
  const int model_vocab = model.config().vocab_size;
  absl::StatusOr<Tokenizer> tokenizer;
  if (!llama2c_path.empty()) {
    tokenizer = FromLlama2cFile(llama2c_path, model_vocab);
  } else if (model.vocabulary().has_value()) {
    tokenizer = FromVocabulary(*model.vocabulary());
  } else {
    return absl::InvalidArgumentError(
        "the model has no embedded vocabulary: pass a llama2.c tokenizer file");
  }
  if (!tokenizer.ok()) return tokenizer.status();
  if (tokenizer->vocab_size() > model_vocab) {
    return absl::InvalidArgumentError(absl::StrCat("the tokenizer has ", tokenizer->vocab_size(),
                                                   " tokens but the model only ", model_vocab));
  }
  return tokenizer;
}

absl::Status Tokenizer::Index() {
  byte_token_.fill(-1);
  byte_of_token_.assign(pieces_.size(), -1);
  id_of_.reserve(pieces_.size());
  for (size_t id = 0; id < pieces_.size(); ++id) {
    // The first of duplicate pieces wins, so lookups are deterministic.
    id_of_.emplace(pieces_[id], static_cast<int>(id));
    int byte = ByteOfPiece(pieces_[id]);
    if (byte >= 0) {
      byte_of_token_[id] = static_cast<int16_t>(byte);
      if (byte_token_[byte] < 0) byte_token_[byte] = static_cast<int>(id);
    }
  }
  return absl::OkStatus();
}

int Tokenizer::Lookup(std::string_view piece) const {
  auto it = id_of_.find(absl::string_view(piece.data(), piece.size()));
  return it == id_of_.end() ? -1 : it->second;
}

std::vector<int> Tokenizer::Encode(std::string_view text, bool bos, bool eos,
                                   bool dummy_prefix) const {
  std::vector<int> tokens;
  tokens.reserve(text.size() + 3);
  if (bos) tokens.push_back(bos_id_);
  auto push_bytes = [&](std::string_view bytes) {
    for (unsigned char c : bytes) {
      // A vocabulary without byte tokens cannot spell this byte: <unk> (0).
      tokens.push_back(byte_token_[c] >= 0 ? byte_token_[c] : 0);
    }
  };
  auto push_piece = [&](std::string_view piece) {
    int id = Lookup(piece);
    if (id >= 0) {
      tokens.push_back(id);
    } else {
      push_bytes(piece);
    }
  };
  const size_t start = tokens.size();  // merges never cross BOS
  // SentencePiece's dummy prefix: a leading space before non-empty text.
  if (dummy_prefix && !text.empty()) push_piece(" ");
  // One code point at a time (at most 4 bytes), as llama2.c does; invalid
  // UTF-8 simply falls back to byte tokens.
  size_t i = 0;
  while (i < text.size()) {
    size_t len = 1;
    while (i + len < text.size() && len < 4 &&
           (static_cast<unsigned char>(text[i + len]) & 0xC0) == 0x80) {
      ++len;
    }
    push_piece(text.substr(i, len));
    i += len;
  }

  // Merge the adjacent pair with the highest score (leftmost on ties) until
  // none merges. A heap with lazy invalidation gives the same result as
  // llama2.c's repeated scan in O(n log n) instead of O(n^2).
  const int n = static_cast<int>(tokens.size() - start);
  if (n > 1) {
    std::vector<int> ids(tokens.begin() + start, tokens.end());
    std::vector<int> next(n), prev(n), version(n, 0);
    std::vector<bool> alive(n, true);
    for (int k = 0; k < n; ++k) {
      next[k] = k + 1 < n ? k + 1 : -1;
      prev[k] = k - 1;
    }
    struct Candidate {
      float score;
      int left, right, left_version, right_version, merged;
    };
    auto worse = [](const Candidate& a, const Candidate& b) {
      if (a.score != b.score) return a.score < b.score;
      return a.left > b.left;
    };
    std::priority_queue<Candidate, std::vector<Candidate>, decltype(worse)> heap(worse);
    std::string pair;
    auto consider = [&](int left) {
      if (left < 0 || next[left] < 0) return;
      int right = next[left];
      pair.assign(pieces_[ids[left]]);
      pair.append(pieces_[ids[right]]);
      int merged = Lookup(pair);
      if (merged >= 0)
        heap.push({scores_[merged], left, right, version[left], version[right], merged});
    };
    for (int k = 0; k + 1 < n; ++k) consider(k);
    while (!heap.empty()) {
      Candidate c = heap.top();
      heap.pop();
      if (!alive[c.left] || !alive[c.right] || next[c.left] != c.right ||
          version[c.left] != c.left_version || version[c.right] != c.right_version) {
        continue;  // stale: one side has merged since this pair was seen
      }
      ids[c.left] = c.merged;
      ++version[c.left];
      alive[c.right] = false;
      next[c.left] = next[c.right];
      if (next[c.right] >= 0) prev[next[c.right]] = c.left;
      consider(prev[c.left]);
      consider(c.left);
    }
    tokens.resize(start);
    for (int k = 0; k >= 0 && k < n; k = next[k]) tokens.push_back(ids[k]);
  }
  if (eos) tokens.push_back(eos_id_);
  return tokens;
}

std::string Tokenizer::Decode(int prev_token, int token) const {
  if (token < 0 || token >= vocab_size()) return std::string();
  if (byte_of_token_[token] >= 0) return std::string(1, static_cast<char>(byte_of_token_[token]));
  const std::string& piece = pieces_[token];
  // After BOS, SentencePiece strips the leading whitespace of the first piece.
  if (prev_token == bos_id_ && !piece.empty() && piece[0] == ' ') return piece.substr(1);
  return piece;
}

std::string Tokenizer::DecodeForDisplay(int prev_token, int token) const {
  std::string piece = Decode(prev_token, token);
  if (piece.size() == 1) {
    unsigned char c = static_cast<unsigned char>(piece[0]);
    if (!(std::isprint(c) || std::isspace(c))) return std::string();
  }
  return piece;
}

std::string Tokenizer::DecodeSequence(const std::vector<int>& tokens) const {
  std::string text;
  for (size_t i = 1; i < tokens.size(); ++i) text += DecodeForDisplay(tokens[i - 1], tokens[i]);
  return text;
}

}  // namespace krul
