#include "krul/model/model_shape.h"

#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "krul/base/status_macros.h"

namespace krul {
namespace {

// The integer fields in positional order, with their keyed names.
struct Field {
  const char* key;
  int ModelConfig::*member;
};
constexpr Field kFields[] = {
    {"dim", &ModelConfig::dim},
    {"hidden", &ModelConfig::hidden_dim},
    {"layers", &ModelConfig::n_layers},
    {"heads", &ModelConfig::n_heads},
    {"kv_heads", &ModelConfig::n_kv_heads},
    {"vocab", &ModelConfig::vocab_size},
    {"seq_len", &ModelConfig::seq_len},
};
constexpr int kNumFields = sizeof(kFields) / sizeof(kFields[0]);

absl::Status NotANumber(absl::string_view item) {
  return absl::InvalidArgumentError(absl::StrCat("model shape: '", item, "' is not a number"));
}

absl::StatusOr<ModelConfig> ParsePositional(absl::string_view text, ModelConfig c) {
  std::vector<absl::string_view> parts = absl::StrSplit(text, ',');
  if (parts.size() != kNumFields) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model shape '", text,
        "' needs 7 comma-separated numbers: dim,hidden_dim,layers,heads,kv_heads,vocab,seq_len"));
  }
  for (int i = 0; i < kNumFields; ++i) {
    // SimpleAtoi ignores surrounding blanks ("64, 172" is fine).
    if (!absl::SimpleAtoi(parts[i], &(c.*kFields[i].member))) return NotANumber(parts[i]);
  }
  return c;
}

absl::StatusOr<ModelConfig> ParseKeyed(absl::string_view text, ModelConfig c) {
  bool seen[kNumFields] = {};
  for (absl::string_view item : absl::StrSplit(text, absl::ByAnyChar(", "), absl::SkipEmpty())) {
    std::vector<absl::string_view> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
    if (kv.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("model shape: item '", item, "' is not key=value"));
    }
    int i = 0;
    while (i < kNumFields && kv[0] != kFields[i].key) ++i;
    if (i == kNumFields) {
      return absl::InvalidArgumentError(
          absl::StrCat("model shape: unknown key '", kv[0],
                       "'; expected dim, hidden, layers, heads, kv_heads, vocab or seq_len"));
    }
    if (seen[i]) {
      return absl::InvalidArgumentError(absl::StrCat("model shape: '", kv[0], "' given twice"));
    }
    seen[i] = true;
    if (!absl::SimpleAtoi(kv[1], &(c.*kFields[i].member))) return NotANumber(kv[1]);
  }
  return c;
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelShape(std::string_view text, const ModelConfig& base) {
  const absl::string_view t =
      absl::StripAsciiWhitespace(absl::string_view(text.data(), text.size()));
  absl::StatusOr<ModelConfig> c = base;
  if (t.find('=') != absl::string_view::npos) {
    c = ParseKeyed(t, base);
  } else if (!t.empty()) {
    c = ParsePositional(t, base);
  }
  if (!c.ok()) return c.status();
  KRUL_RETURN_IF_ERROR(c->Validate());
  return c;
}

}  // namespace krul
