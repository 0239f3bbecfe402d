// Byte-pair tokenizer with the semantics of llama2.c (SentencePiece-style
// vocabulary with scores): the text gets a dummy leading space, each UTF-8
// code point becomes its token or, failing that, its byte tokens "<0xXX>";
// then the adjacent pair whose merge has the highest score is merged until
// no merge exists.
//
// Immutable after construction; safe to share between threads.
#ifndef KRUL_MODEL_TOKENIZER_H_
#define KRUL_MODEL_TOKENIZER_H_

#include <array>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "krul/model/model.h"

namespace krul {

class Tokenizer {
 public:
  // Reads a llama2.c tokenizer file (int32 max_token_length, then per token
  // float score, int32 length, bytes). `vocab_size` tokens are read; 0 reads
  // to the end of the file. NOT_FOUND if missing, INVALID_ARGUMENT or
  // DATA_LOSS (truncated) naming the token index otherwise. BOS is 1, EOS 2.
  static absl::StatusOr<Tokenizer> FromLlama2cFile(const std::string& path, int vocab_size = 0);

  // Builds a tokenizer from a vocabulary embedded in a model file.
  // INVALID_ARGUMENT if pieces and scores disagree in length or the special
  // ids are out of range.
  static absl::StatusOr<Tokenizer> FromVocabulary(const Vocabulary& vocabulary);

  // The tokenizer to run `model` with: the llama2.c file at `llama2c_path`
  // when it is not empty (the model's vocab_size tokens read), else the
  // vocabulary embedded in the model. INVALID_ARGUMENT when the path is
  // empty and the model has no vocabulary, or when the tokenizer has more
  // tokens than the model; the errors of FromLlama2cFile / FromVocabulary.
  static absl::StatusOr<Tokenizer> ForModel(const Model& model, const std::string& llama2c_path);

  int vocab_size() const { return static_cast<int>(pieces_.size()); }
  int bos_id() const { return bos_id_; }
  int eos_id() const { return eos_id_; }
  const std::string& piece(int id) const { return pieces_[id]; }

  // Token ids of `text`, with BOS first / EOS last when asked. Without
  // `dummy_prefix` no space is put in front: the ids of `text` as it reads
  // after other text (how a model's own continuation is split).
  std::vector<int> Encode(std::string_view text, bool bos, bool eos,
                          bool dummy_prefix = true) const;

  // The text of `token` as it follows `prev_token`: the space after BOS is
  // dropped and byte tokens "<0xXX>" become that byte (llama2.c decode()).
  std::string Decode(int prev_token, int token) const;

  // Like Decode, but drops what llama2.c's safe_printf() would not print: an
  // empty piece, or a single byte that is neither printable nor whitespace.
  std::string DecodeForDisplay(int prev_token, int token) const;

  // Decodes a whole sequence whose first element is the token before it
  // (typically BOS), concatenating DecodeForDisplay of each pair.
  std::string DecodeSequence(const std::vector<int>& tokens) const;

 private:
  Tokenizer() = default;
  absl::Status Index();
  int Lookup(std::string_view piece) const;

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  absl::flat_hash_map<std::string, int> id_of_;
  std::array<int, 256> byte_token_{};   // byte -> id of "<0xXX>", -1 if absent
  std::vector<int16_t> byte_of_token_;  // id -> byte value for "<0xXX>" tokens, else -1
  int bos_id_ = 1;
  int eos_id_ = 2;
};

}  // namespace krul

#endif  // KRUL_MODEL_TOKENIZER_H_
