// A model's shape (the integer fields of ModelConfig) from the text of a
// flag, in either of the two forms the tools take:
//
//   positional  "64,172,5,8,4,512,512"
//               exactly seven integers: dim,hidden_dim,layers,heads,
//               kv_heads,vocab,seq_len (krul-worker / krul-generate
//               --synthetic_shape);
//   keyed       "dim=128,hidden=344,layers=12,heads=2,kv_heads=2,vocab=512"
//               key=value items, each overriding `base`; keys are the names
//               ModelConfig::ToString prints (dim hidden layers heads
//               kv_heads vocab seq_len), items separated by commas or spaces
//               (the benches' --model_shape).
//
// Text with an '=' is keyed; other non-empty text is positional; empty (or
// all-blank) text is `base` itself. Fields the text does not set (norm_eps,
// rope_theta, ... and, in the keyed form, unnamed keys) come from `base`.
// Pure; thread-safe.
#ifndef KRUL_MODEL_MODEL_SHAPE_H_
#define KRUL_MODEL_MODEL_SHAPE_H_

#include <string_view>

#include "absl/status/statusor.h"
#include "krul/model/model.h"

namespace krul {

// The shape `text` describes, validated with ModelConfig::Validate.
// INVALID_ARGUMENT naming the problem: a positional list without exactly
// seven items, an item that is not an integer, a keyed item without '=' or
// with an unknown or repeated key, or a shape Validate rejects.
absl::StatusOr<ModelConfig> ParseModelShape(std::string_view text,
                                            const ModelConfig& base = ModelConfig());

}  // namespace krul

#endif  // KRUL_MODEL_MODEL_SHAPE_H_
