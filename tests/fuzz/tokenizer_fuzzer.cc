// Fuzzes the tokenizer (krul/model/tokenizer.h): loading a llama2.c
// tokenizer file (disk), then encoding text (users' prompts, over HTTP) and
// decoding ids (the model's output) with it.
//
// Input layout:
//   u8  vocab_size argument of FromLlama2cFile (0: read to the end)
//   u8  flags: bit 0 = add BOS, bit 1 = add EOS
//   u16 little-endian length N of the text
//   N bytes of text (any bytes; short inputs take what is there)
//   the rest: the tokenizer file
// Properties: nothing crashes; load errors have the documented codes;
// every id Encode returns is a valid id, with BOS/EOS where asked and at
// most one token per byte (plus the dummy prefix); Decode of any id, valid
// or not, is safe.
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "krul/model/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static krul::fuzz::MemFile* mem = new krul::fuzz::MemFile();
  if (size < 4) return 0;
  const int vocab_size = data[0];
  const bool bos = data[1] & 1, eos = data[1] & 2;
  size_t text_len = data[2] | (static_cast<size_t>(data[3]) << 8);
  if (text_len > size - 4) text_len = size - 4;
  const std::string_view text = krul::fuzz::AsView(data + 4, text_len);
  const std::string_view file = krul::fuzz::AsView(data + 4 + text_len, size - 4 - text_len);

  auto tokenizer = krul::Tokenizer::FromLlama2cFile(mem->Write(file), vocab_size);
  if (!tokenizer.ok()) {
    FUZZ_CHECK(absl::IsInvalidArgument(tokenizer.status()) || absl::IsDataLoss(tokenizer.status()));
    return 0;
  }
  const int n = tokenizer->vocab_size();
  FUZZ_CHECK(n >= 3);
  if (vocab_size != 0) FUZZ_CHECK(n == vocab_size);

  std::vector<int> tokens = tokenizer->Encode(text, bos, eos);
  for (int t : tokens) FUZZ_CHECK(t >= 0 && t < n);
  if (bos) FUZZ_CHECK(!tokens.empty() && tokens.front() == tokenizer->bos_id());
  if (eos) FUZZ_CHECK(!tokens.empty() && tokens.back() == tokenizer->eos_id());
  const size_t specials = (bos ? 1 : 0) + (eos ? 1 : 0);
  // Merges only shrink: one token per byte, plus the dummy prefix space, at most.
  FUZZ_CHECK(tokens.size() <= text.size() + 1 + specials);

  int prev = tokenizer->bos_id();
  for (int t : tokens) {
    (void)tokenizer->Decode(prev, t);
    prev = t;
  }
  (void)tokenizer->DecodeSequence(tokens);
  for (int id : {-1, n, n + 1000, 0, n - 1}) {
    (void)tokenizer->Decode(id, id);
    (void)tokenizer->DecodeForDisplay(0, id);
  }

  return 0;
}
