#include "worker/session/session_record.h"

#include <xxhash.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "krul/compress/estimate_codec.h"
#include "worker/api/string_view_conversion.h"

namespace krul::worker {
namespace {

constexpr char kMagic[4] = {'K', 'R', 'W', 'S'};
constexpr uint16_t kVersion = 2;
constexpr uint16_t kVersionWithoutEstimate = 1;
// Bounds that keep a hostile record from asking for absurd allocations.
constexpr uint32_t kMaxTokens = 1u << 22;
constexpr uint32_t kMaxLayers = 4096;
constexpr uint32_t kMaxBytesField = 1u << 20;

class Writer {
 public:
  template <typename T>
  void Put(T v) {
    char buf[sizeof(T)];
    std::memcpy(buf, &v, sizeof(T));  // little-endian hosts only (x86-64, aarch64)
    out_.append(buf, sizeof(T));
  }
  void Bytes(std::string_view b) {
    Put<uint32_t>(static_cast<uint32_t>(b.size()));
    out_.append(b.data(), b.size());
  }
  std::string& out() { return out_; }

 private:
  std::string out_;
};

class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  template <typename T>
  bool Get(T* v) {
    if (in_.size() - pos_ < sizeof(T)) return false;
    std::memcpy(v, in_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool Bytes(std::string* b) {
    uint32_t n = 0;
    if (!Get(&n) || n > kMaxBytesField || in_.size() - pos_ < n) return false;
    b->assign(in_.data() + pos_, n);
    pos_ += n;
    return true;
  }
  size_t remaining() const { return in_.size() - pos_; }

 private:
  std::string_view in_;
  size_t pos_ = 0;
};

absl::Status Truncated(absl::string_view what) {
  return absl::DataLossError(absl::StrCat("session record truncated at ", what));
}

}  // namespace

std::string EncodeSessionRecord(const SessionRecord& r) {
  Writer w;
  w.out().append(kMagic, 4);
  w.Put<uint16_t>(kVersion);
  w.Put<uint16_t>(0);
  w.Bytes(r.model_id);
  w.Put<uint8_t>(static_cast<uint8_t>(r.chat_template));
  w.Put<uint8_t>(static_cast<uint8_t>(r.mode));
  w.Put<uint8_t>(static_cast<uint8_t>(r.dtype));
  w.Put<uint8_t>(static_cast<uint8_t>(r.policy));
  w.Put<uint32_t>(r.message_count);
  w.Put<uint64_t>(r.digest);
  w.Put<uint32_t>(static_cast<uint32_t>(r.tokens.size()));
  for (int t : r.tokens) w.Put<int32_t>(t);
  w.Put<uint32_t>(static_cast<uint32_t>(r.kv_tokens));
  w.Put<uint32_t>(static_cast<uint32_t>(r.recompute_tokens.size()));
  for (int n : r.recompute_tokens) w.Put<uint32_t>(static_cast<uint32_t>(n));
  w.Put<double>(r.predicted_seconds);
  w.Put<uint32_t>(static_cast<uint32_t>(r.expected_new_tokens));
  w.Put<uint32_t>(static_cast<uint32_t>(r.granularity_tokens));
  w.Bytes(SerializePlan(r.plan));
  std::string estimate;
  if (r.estimate.has_value()) {
    // A malformed estimate is not worth failing the turn for: stored as none.
    auto bytes = SerializeEstimate(*r.estimate);
    if (bytes.ok()) estimate = *std::move(bytes);
  }
  w.Bytes(estimate);
  const uint64_t checksum = XXH3_64bits(w.out().data(), w.out().size());
  w.Put<uint64_t>(checksum);
  return std::move(w.out());
}

absl::StatusOr<SessionRecord> DecodeSessionRecord(std::string_view bytes) {
  if (bytes.size() < 4 + 4 + 8) return absl::DataLossError("session record too short");
  if (std::memcmp(bytes.data(), kMagic, 4) != 0) {
    return absl::DataLossError("session record has a bad magic");
  }
  uint64_t stored_checksum = 0;
  std::memcpy(&stored_checksum, bytes.data() + bytes.size() - 8, 8);
  if (XXH3_64bits(bytes.data(), bytes.size() - 8) != stored_checksum) {
    return absl::DataLossError("session record checksum mismatch");
  }
  Reader in(bytes.substr(4, bytes.size() - 4 - 8));
  uint16_t version = 0, flags = 0;
  if (!in.Get(&version) || !in.Get(&flags)) return Truncated("header");
  if ((version != kVersion && version != kVersionWithoutEstimate) || flags != 0) {
    return absl::UnimplementedError(
        absl::StrCat("session record version ", version, " flags ", flags, " not supported"));
  }
  SessionRecord r;
  if (!in.Bytes(&r.model_id)) return Truncated("model_id");
  uint8_t tmpl = 0, mode = 0, dtype = 0, policy = 0;
  if (!in.Get(&tmpl) || !in.Get(&mode) || !in.Get(&dtype) || !in.Get(&policy)) {
    return Truncated("enums");
  }
  if (tmpl > static_cast<uint8_t>(ChatTemplateKind::kRoles)) {
    return absl::InvalidArgumentError("session record: unknown chat template");
  }
  if (mode > static_cast<uint8_t>(RestoreMode::kKrul)) {
    return absl::InvalidArgumentError("session record: unknown restore mode");
  }
  if (dtype > static_cast<uint8_t>(DType::kBF16)) {
    return absl::InvalidArgumentError("session record: unknown dtype");
  }
  if (policy > static_cast<uint8_t>(SplitPolicy::kPyramid)) {
    return absl::InvalidArgumentError("session record: unknown split policy");
  }
  r.chat_template = static_cast<ChatTemplateKind>(tmpl);
  r.mode = static_cast<RestoreMode>(mode);
  r.dtype = static_cast<DType>(dtype);
  r.policy = static_cast<SplitPolicy>(policy);
  if (!in.Get(&r.message_count) || !in.Get(&r.digest)) return Truncated("messages");
  uint32_t n_tokens = 0;
  if (!in.Get(&n_tokens)) return Truncated("tokens");
  if (n_tokens > kMaxTokens || in.remaining() / 4 < n_tokens) return Truncated("tokens");
  r.tokens.resize(n_tokens);
  for (uint32_t i = 0; i < n_tokens; ++i) {
    int32_t t = 0;
    in.Get(&t);
    r.tokens[i] = t;
  }
  uint32_t kv_tokens = 0, n_layers = 0;
  if (!in.Get(&kv_tokens) || !in.Get(&n_layers)) return Truncated("kv_tokens");
  if (n_layers > kMaxLayers || in.remaining() / 4 < n_layers) return Truncated("recompute_tokens");
  r.kv_tokens = static_cast<int>(kv_tokens);
  r.recompute_tokens.resize(n_layers);
  for (uint32_t l = 0; l < n_layers; ++l) {
    uint32_t n = 0;
    in.Get(&n);
    r.recompute_tokens[l] = static_cast<int>(std::min<uint32_t>(n, kMaxTokens + 1));
  }
  uint32_t expected = 0, granularity = 0;
  if (!in.Get(&r.predicted_seconds) || !in.Get(&expected) || !in.Get(&granularity)) {
    return Truncated("costs");
  }
  r.expected_new_tokens = static_cast<int>(std::min<uint32_t>(expected, kMaxTokens));
  r.granularity_tokens = static_cast<int>(std::min<uint32_t>(granularity, kMaxTokens));
  std::string plan_bytes;
  if (!in.Bytes(&plan_bytes)) return Truncated("plan");
  std::string estimate_bytes;
  if (version >= 2 && !in.Bytes(&estimate_bytes)) return Truncated("estimate");
  if (in.remaining() != 0) return absl::DataLossError("session record has trailing bytes");
  auto plan = ParsePlan(plan_bytes);
  if (!plan.ok()) return plan.status();
  r.plan = *std::move(plan);
  if (!estimate_bytes.empty()) {
    auto estimate = ParseEstimate(estimate_bytes);
    if (!estimate.ok()) return estimate.status();
    if (estimate->n_layers != r.plan.n_layers) {
      return absl::InvalidArgumentError("session record: estimate and plan disagree on layers");
    }
    r.estimate = *std::move(estimate);
  }

  // Consistency.
  if (r.kv_tokens < 1 || r.kv_tokens > static_cast<int>(r.tokens.size())) {
    return absl::InvalidArgumentError(absl::StrCat("session record: kv_tokens ", r.kv_tokens,
                                                   " outside [1, ", r.tokens.size(), "]"));
  }
  if (static_cast<int>(n_layers) != r.plan.n_layers) {
    return absl::InvalidArgumentError("session record: split and plan disagree on layers");
  }
  for (uint32_t l = 0; l < n_layers; ++l) {
    const int n = r.recompute_tokens[l];
    if (n < 0 || n > r.kv_tokens || (l > 0 && n > r.recompute_tokens[l - 1])) {
      return absl::InvalidArgumentError(
          absl::StrCat("session record: recompute_tokens is not a pyramid in [0, ", r.kv_tokens,
                       "] at layer ", l));
    }
  }
  if (!(r.predicted_seconds >= 0) || r.granularity_tokens < 1) {
    return absl::InvalidArgumentError("session record: bad planning parameters");
  }
  return r;
}

absl::StatusOr<RestorePlan> RestorePlanFromRecord(const SessionRecord& record, const KvShape& shape,
                                                  int new_tokens) {
  if (record.plan.n_layers != shape.n_layers ||
      static_cast<int>(record.recompute_tokens.size()) != shape.n_layers) {
    return absl::InvalidArgumentError(absl::StrCat("stored KV is for ", record.plan.n_layers,
                                                   " layers; the model has ", shape.n_layers));
  }
  RestorePlan plan;
  plan.n_layers = shape.n_layers;
  plan.history_tokens = record.kv_tokens;
  plan.new_tokens = new_tokens;
  plan.policy = record.policy;
  plan.layout = LayoutForPlan(shape, record.plan, record.dtype);
  if (auto s = plan.layout.Validate(shape.n_layers); !s.ok()) return s;
  plan.recompute_tokens = record.recompute_tokens;
  plan.loads =
      MakeLoadSteps(plan.layout, plan.n_layers, plan.history_tokens, plan.recompute_tokens);
  plan.stored_begin.assign(plan.layout.groups.size(), plan.history_tokens);
  for (size_t g = 0; g < plan.layout.groups.size(); ++g) {
    for (int l : plan.layout.groups[g].layers) {
      plan.stored_begin[g] = std::min(plan.stored_begin[g], plan.recompute_tokens[l]);
    }
  }
  plan.stored_bytes =
      StoredBytes(plan.layout, plan.n_layers, plan.history_tokens, plan.recompute_tokens);
  plan.predicted_seconds = record.predicted_seconds;
  plan.granularity_tokens = record.granularity_tokens;
  return plan;
}

}  // namespace krul::worker
