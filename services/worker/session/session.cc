#include "worker/session/session.h"

#include <algorithm>
#include <chrono>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "krul/base/log.h"
#include "krul/kvformat/kv_mac.h"
#include "krul/restore/restore_plan.h"
#include "worker/session/kv_blocks.h"
#include "worker/session/session_record.h"
#include "worker/session/tenant_scope.h"

namespace krul::worker {
namespace {

double MsSince(absl::Time t) { return absl::ToDoubleMilliseconds(absl::Now() - t); }

// The fallback reason for a store or restore error.
std::string_view FallbackReason(const absl::Status& s) {
  if (IsKvIntegrityError(s)) return kFallbackIntegrity;
  switch (s.code()) {
    case absl::StatusCode::kUnavailable:
      return kFallbackUnavailable;
    case absl::StatusCode::kDeadlineExceeded:
      return kFallbackDeadline;
    case absl::StatusCode::kNotFound:
      return kFallbackMissingBlocks;
    case absl::StatusCode::kDataLoss:
      return kFallbackChecksum;
    default:
      return kFallbackError;
  }
}

// Stored token ids feed the engine: they must be ids of this vocabulary,
// starting with BOS, or the record is not this model's history.
bool TokensValid(const std::vector<int>& tokens, int vocab_size, int bos) {
  if (tokens.empty() || tokens[0] != bos) return false;
  for (int t : tokens) {
    if (t < 0 || t >= vocab_size) return false;
  }
  return true;
}

std::string DigestId(uint64_t digest) { return absl::StrFormat("h:%016x", digest); }

int AssistantMessages(const std::vector<ChatMessage>& messages) {
  int n = 0;
  for (const ChatMessage& m : messages) n += m.role == Role::kAssistant;
  return n;
}

}  // namespace

Session::Session(WorkerCore& core, AdmissionTicket ticket, const ChatRequest& request)
    : core_(core),
      ticket_(std::move(ticket)),
      slot_(core.slot(ticket_.slot())),
      request_(request),
      // WorkerCore::StartChat checked the name; absent = the worker's mode.
      mode_(ParseRestoreMode(request.mode.value_or("")).value_or(core.options().mode)) {
  core_.metrics().active_requests().Increment();
}

Session::~Session() {
  // Clearing never fails to clear; an error is only about blocks delivered.
  // Without the ticket the slot is the persister's (Commit's rewrite).
  if (ticket_.valid()) slot_.backend->SetAttentionObserver(nullptr).IgnoreError();
  // The lease of the restored version, released once the answer is out
  // (never on the first token's path); it also runs out by itself.
  if (pin_.lease_id != 0) {
    if (auto s = core_.store().Unpin(pin_, absl::Now() + core_.options().kvstore_deadline);
        !s.ok()) {
      KRUL_LOG(WARNING) << "krul-worker: unpin of '" << store_id_ << "' failed: " << s;
    }
  }
  core_.metrics().active_requests().Decrement();
}

absl::StatusOr<std::unique_ptr<Session>> Session::Begin(WorkerCore& core, AdmissionTicket ticket,
                                                        const ChatRequest& request,
                                                        absl::Time accepted) {
  std::unique_ptr<Session> session(new Session(core, std::move(ticket), request));
  if (auto s = session->Start(accepted); !s.ok()) return s;
  return session;
}

absl::Status Session::PrefillAll() {
  const int n = static_cast<int>(tokens_.size());
  absl::Status s;
  if (estimator_ != nullptr) s = slot_.backend->SetAttentionObserver(estimator_->observer());
  const auto t0 = std::chrono::steady_clock::now();
  if (s.ok()) s = slot_.backend->Forward(*cache_, tokens_, 0, logits_);
  core_.metrics().generation_seconds().Increment(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  stats_.prefilled_tokens = n;
  return s;
}

// The stored version a turn may continue from: what the lookup found and
// validation accepted, or why not (a fallback reason; empty for a miss).
struct Session::StoredTurn {
  std::string lookup_id;  // empty: nothing to look up (a first turn by content)
  std::optional<SessionRecord> record;
  std::optional<v1::Manifest> manifest;
  std::string fallback;
};

absl::Status Session::Start(absl::Time accepted) {
  if (auto s = InitTurn(); !s.ok()) return s;
  const absl::Time lookup_start = absl::Now();
  StoredTurn stored = LookupStoredTurn();
  stats_.profile.lookup_ms = MsSince(lookup_start);
  std::vector<int> new_tokens;  // prefilled after the restored history
  if (auto s = TokenizeTurn(stored, new_tokens); !s.ok()) return s;
  if (auto s = CreateTurnState(); !s.ok()) return s;
  const bool restored = stored.record.has_value() && RestoreStoredTurn(stored, new_tokens);
  if (!restored) {
    if (auto s = FallBackToPrefill(stored); !s.ok()) return s;
  }
  return SampleFirstToken(accepted);
}

// Stats of the turn so far and its sampler.
absl::Status Session::InitTurn() {
  stats_.mode = std::string(RestoreModeName(mode_));
  stats_.worker_id = core_.worker_id();
  stats_.queue_ms = absl::ToDoubleMilliseconds(ticket_.waited());
  logits_.assign(core_.model().config().vocab_size, 0.0f);
  SamplerOptions sampler_options;
  sampler_options.temperature = request_.temperature;
  sampler_options.top_p = request_.top_p;
  sampler_options.seed = request_.seed.has_value() ? *request_.seed : std::random_device{}();
  auto sampler = Sampler::Create(sampler_options);
  if (!sampler.ok()) return sampler.status();
  sampler_.emplace(*std::move(sampler));
  return absl::OkStatus();
}

// Which stored version could hold this conversation's history: by its
// conversation_id, or by the digest of the messages up to the last answer.
Session::StoredTurn Session::LookupStoredTurn() {
  const std::vector<ChatMessage>& messages = request_.messages;
  StoredTurn stored;
  if (!request_.conversation_id.empty()) {
    explicit_id_ = "c:" + request_.conversation_id;
    stored.lookup_id = explicit_id_;
  } else {
    for (size_t i = messages.size(); i-- > 0;) {
      if (messages[i].role == Role::kAssistant) {
        stored.lookup_id = DigestId(PrefixDigest(messages, i + 1));
        break;
      }
    }
  }
  if (stored.lookup_id.empty()) return stored;
  const WorkerOptions& options = core_.options();
  // Scoped by the caller's tenant: another tenant's id is not even looked at.
  auto found =
      core_.store().LookupLatest(options.tenant, TenantScopedId(request_.tenant, stored.lookup_id),
                                 absl::Now() + options.kvstore_deadline);
  if (!found.ok()) {
    if (found.status().code() != absl::StatusCode::kNotFound) {
      stored.fallback = FallbackReason(found.status());
    }
    return stored;
  }
  auto decoded = DecodeSessionRecord(found->plan());
  if (!decoded.ok()) {
    stored.fallback = decoded.status().code() == absl::StatusCode::kDataLoss ? kFallbackChecksum
                                                                             : kFallbackMismatch;
    return stored;
  }
  stored.fallback = ValidateStoredTurn(*decoded, *found);
  if (stored.fallback.empty()) {
    stored.record = *std::move(decoded);
    stored.manifest = *std::move(found);
  }
  return stored;
}

// Empty when `record` is this model's, this template's and a prefix of this
// request's messages; the fallback reason otherwise.
std::string_view Session::ValidateStoredTurn(const SessionRecord& record,
                                             const v1::Manifest& manifest) const {
  const std::vector<ChatMessage>& messages = request_.messages;
  if (!TokensValid(record.tokens, core_.model().config().vocab_size, core_.tokenizer().bos_id()) ||
      record.model_id != core_.model_id() || manifest.model_id() != core_.model_id() ||
      record.chat_template != core_.chat_template().kind() ||
      messages.size() <= record.message_count ||
      PrefixDigest(messages, record.message_count) != record.digest) {
    return kFallbackMismatch;
  }
  // Only KV of the canonical tokens of the history's text is restored: a
  // recompute of the same messages prefills exactly these, so the answer
  // does not depend on which of the two happens. (A version stored with
  // other ids for the same text, e.g. by an older worker, is not used.)
  if (record.tokens != core_.chat_template().HistoryTokens(messages, record.message_count)) {
    return kFallbackMismatch;
  }
  return {};
}

// tokens_ = the turn's tokens (the stored history, the new messages and the
// generation prompt); `new_tokens` = those after the restored history.
// INVALID_ARGUMENT when the turn does not fit the model's context.
absl::Status Session::TokenizeTurn(const StoredTurn& stored, std::vector<int>& new_tokens) {
  const ModelConfig& config = core_.model().config();
  const std::vector<ChatMessage>& messages = request_.messages;
  // One tokenization for a restore and a recompute: the restored record's
  // tokens are HistoryTokens of its messages (ValidateStoredTurn), hence a
  // prefix of these.
  tokens_ = core_.chat_template().PromptTokens(messages);
  if (stored.record.has_value()) {
    new_tokens.assign(tokens_.begin() + stored.record->kv_tokens, tokens_.end());
  }
  const int prompt_len = static_cast<int>(tokens_.size());
  if (prompt_len >= config.seq_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("context_length_exceeded: the conversation is ", prompt_len,
                     " tokens long; this model's context is ", config.seq_len,
                     " tokens (shorten the messages or start a new conversation)"));
  }
  if (prompt_len + request_.max_tokens > config.seq_len) {
    return absl::InvalidArgumentError(absl::StrCat(
        "context_length_exceeded: the conversation is ", prompt_len, " tokens and max_tokens is ",
        request_.max_tokens, "; together they exceed this model's context of ", config.seq_len,
        " tokens (at most ", config.seq_len - prompt_len, " new tokens fit)"));
  }
  stats_.prompt_tokens = prompt_len;
  capacity_ = prompt_len + request_.max_tokens;
  return absl::OkStatus();
}

// The turn's KV cache and, for krul, its similarity estimator, on the
// slot's backend.
absl::Status Session::CreateTurnState() {
  auto cache = slot_.backend->CreateKvCache(capacity_);
  if (!cache.ok()) return cache.status();
  cache_ = *std::move(cache);
  if (RestoreModePairSource(mode_) == PairSource::kPerConversation) {
    auto estimator = CreateBackendEstimator(*slot_.backend, capacity_);
    if (!estimator.ok()) return estimator.status();
    estimator_ = *std::move(estimator);
  }
  return absl::OkStatus();
}

// Restores the stored history (recompute + load per layer) while the new
// tokens are prefilled. False, with stored.fallback set, when the plan does
// not fit or the restore failed: the cache must then be rewritten.
bool Session::RestoreStoredTurn(StoredTurn& stored, const std::vector<int>& new_tokens) {
  const SessionRecord& record = *stored.record;
  const int history = record.kv_tokens;
  auto plan = RestorePlanFromRecord(record, core_.shape(), static_cast<int>(new_tokens.size()));
  if (!plan.ok()) {
    stored.fallback = kFallbackMismatch;
    return false;
  }
  const WorkerOptions& options = core_.options();
  // Lease the version for the restore: the kvstore must not evict, expire
  // or delete it while its blocks are read (released in ~Session). Only a
  // plan that loads needs it.
  if (options.pin_restores && !plan->loads.empty()) {
    const absl::Time pin_start = absl::Now();
    auto pinned = core_.store().Pin(stored.manifest->key(), options.restore_lease,
                                    pin_start + options.kvstore_deadline);
    stats_.profile.pin_ms = MsSince(pin_start);
    if (!pinned.ok()) {
      stored.fallback = FallbackReason(pinned.status());
      KRUL_LOG(WARNING) << "krul-worker: cannot lease '" << stored.lookup_id << "' ("
                        << stored.fallback << "), recomputing: " << pinned.status();
      return false;
    }
    pin_ = *pinned;
  }
  StoreSourceStats source_stats;
  absl::StatusOr<RestoreStats> restore;
  {
    std::unique_ptr<KvSource> source =
        MakeStoreKvSource(&core_.store(), *stored.manifest, core_.shape(), options.kvstore_deadline,
                          options.prefetch_blocks ? BlocksForLoads(*stored.manifest, plan->loads)
                                                  : std::vector<uint32_t>(),
                          &source_stats);
    if (options.emulated_link_gbit_per_s > 0) {
      // No real link here: the load stream is paced by a sleep (labelled).
      LinkModel link;
      link.latency_s = absl::ToDoubleSeconds(options.emulated_link_latency);
      link.bytes_per_second = options.emulated_link_gbit_per_s * 1e9 / 8;
      auto paced = MakeLinkPacedKvSource(std::move(source), link);
      if (!paced.ok()) {
        stored.fallback = kFallbackError;
        return false;
      }
      source = *std::move(paced);
      stats_.link = "emulated";
    }
    // The recomputed history is no part of the turn's estimate; the new
    // input's prefill is (the history's is carried in the record).
    const absl::Status cleared = slot_.backend->SetAttentionObserver(nullptr);
    restore = cleared.ok()
                  ? slot_.restorer->Restore(*plan, std::span<const int>(tokens_.data(), history),
                                            new_tokens, source.get(), *cache_, logits_,
                                            estimator_ ? estimator_->observer() : nullptr)
                  : absl::StatusOr<RestoreStats>(cleared);
  }  // the source is gone: its background read stopped, its stats final
  if (!restore.ok()) {
    stored.fallback = FallbackReason(restore.status());
    KRUL_LOG(WARNING) << "krul-worker: restore of '" << stored.lookup_id << "' failed ("
                      << stored.fallback << "), recomputing: " << restore.status();
    return false;
  }
  stats_.prefilled_tokens = static_cast<int>(new_tokens.size());
  carried_estimate_ = record.estimate;  // the turns before, for the persister
  RecordRestoreHit(*restore, history);
  RestoreProfile& p = stats_.profile;
  p.first_block_ms = source_stats.first_block_seconds * 1e3;
  p.blocks_ms = source_stats.blocks_seconds * 1e3;
  p.load_wait_ms = source_stats.wait_seconds * 1e3;
  p.decode_ms = source_stats.decode_seconds * 1e3;
  return true;
}

void Session::RecordRestoreHit(const RestoreStats& restore, int history) {
  const double L = core_.shape().n_layers;
  stats_.restore = "hit";
  stats_.restored_tokens = history;
  stats_.recomputed_tokens = static_cast<double>(restore.recomputed_token_layers) / L;
  stats_.loaded_tokens = history - stats_.recomputed_tokens;
  stats_.loaded_bytes = restore.loaded_bytes;
  stats_.restore_ms = restore.restore_seconds * 1e3;
  RestoreProfile& p = stats_.profile;
  p.load_ms = restore.load_seconds * 1e3;
  p.load_latency_ms = restore.load_latency_seconds * 1e3;
  p.recompute_ms = restore.recompute_seconds * 1e3;
  p.prefill_ms = restore.prefill_seconds * 1e3;
  p.total_ms = restore.total_seconds * 1e3;
  p.predicted_ms = restore.plan.predicted_seconds * 1e3;
  p.plan_ms = restore.replan_seconds * 1e3;
  p.bound_ms = restore.lower_bound_seconds * 1e3;
  p.efficiency = restore.efficiency;
  WorkerMetrics& m = core_.metrics();
  m.CountRestore("hit");
  m.ObserveRestore("total", restore.restore_seconds);
  m.ObserveRestore("recompute", restore.recompute_seconds);
  m.ObserveRestore("load", restore.load_seconds);
  m.restored_tokens().Increment(history);
  m.recomputed_tokens().Increment(stats_.recomputed_tokens);
  m.loaded_tokens().Increment(stats_.loaded_tokens);
  m.loaded_bytes().Increment(static_cast<double>(restore.loaded_bytes));
  if (restore.efficiency > 0) m.scheduler_efficiency().Observe(restore.efficiency);
}

// A miss, or a fallback (counted by reason): the whole prompt prefilled.
absl::Status Session::FallBackToPrefill(const StoredTurn& stored) {
  const auto t0 = std::chrono::steady_clock::now();
  // After a failed restore the cache is partly written: PrefillAll
  // rewrites every position the turn reads, so nothing stale survives.
  if (auto s = PrefillAll(); !s.ok()) return absl::InternalError(s.message());
  if (!stored.fallback.empty()) {
    stats_.restore = "fallback";
    stats_.fallback_reason = stored.fallback;
    core_.metrics().CountFallback(stored.fallback);
    core_.metrics().CountRestore("fallback");
    stats_.restore_ms =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() * 1e3;
  } else if (!stored.lookup_id.empty()) {
    stats_.restore = "miss";
    core_.metrics().CountRestore("miss");
  }
  return absl::OkStatus();
}

// The estimator observes from here on; the first token and the TTFT metrics.
absl::Status Session::SampleFirstToken(absl::Time accepted) {
  pos_ = stats_.prompt_tokens;
  if (auto s = slot_.backend->SetAttentionObserver(estimator_ ? estimator_->observer() : nullptr);
      !s.ok()) {
    return absl::InternalError(s.message());
  }
  next_ = sampler_->Sample(logits_);
  stats_.ttft_ms = MsSince(accepted);
  stats_.conversation_id = explicit_id_.empty() ? std::string() : request_.conversation_id;
  core_.metrics().ObserveTtft(stats_.mode, stats_.ttft_ms / 1e3);
  core_.metrics().prompt_tokens().Increment(stats_.prompt_tokens);
  return absl::OkStatus();
}

absl::StatusOr<std::string> Session::Next() {
  if (done_ || failed_) return std::string();
  const Tokenizer& tokenizer = core_.tokenizer();
  const int token = next_;
  std::string text;
  if (token == tokenizer.bos_id() || token == tokenizer.eos_id()) {
    done_ = true;
    finish_reason_ = "stop";
  } else {
    const int prev = tokens_.back();
    tokens_.push_back(token);
    completion_.push_back(token);
    core_.metrics().generated_tokens().Increment();
    text = utf8_.Append(tokenizer.Decode(prev, token));
    if (static_cast<int>(completion_.size()) >= request_.max_tokens || pos_ >= capacity_) {
      done_ = true;
      finish_reason_ = "length";
    } else {
      const auto t0 = std::chrono::steady_clock::now();
      absl::Status s =
          slot_.backend->Forward(*cache_, std::span<const int>(&token, 1), pos_, logits_);
      core_.metrics().generation_seconds().Increment(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      if (!s.ok()) {
        failed_ = true;
        return absl::InternalError(s.message());
      }
      ++pos_;
      next_ = sampler_->Sample(logits_);
    }
  }
  if (done_) text += utf8_.Finish();
  content_ += text;
  stats_.completion_tokens = static_cast<int>(completion_.size());
  if (done_) {
    // The digest id of the finished history, for clients keyed by content.
    std::vector<ChatMessage> history = request_.messages;
    history.push_back(ChatMessage{Role::kAssistant, content_});
    store_id_ =
        explicit_id_.empty() ? DigestId(PrefixDigest(history, history.size())) : explicit_id_;
    if (stats_.conversation_id.empty()) stats_.conversation_id = store_id_;
  }
  return text;
}

void Session::Commit() {
  if (!done_ || failed_ || committed_) return;
  committed_ = true;
  // The estimate is finished by the persister; clearing never fails to clear.
  slot_.backend->SetAttentionObserver(nullptr).IgnoreError();
  PersistJob job;
  job.key.set_tenant(core_.options().tenant);
  job.key.set_conversation_id(TenantScopedId(request_.tenant, store_id_));
  SessionRecord& r = job.record;
  r.model_id = core_.model_id();
  r.chat_template = core_.chat_template().kind();
  r.mode = mode_;
  r.message_count = static_cast<uint32_t>(request_.messages.size() + 1);
  std::vector<ChatMessage> history = request_.messages;
  history.push_back(ChatMessage{Role::kAssistant, content_});
  r.digest = PrefixDigest(history, history.size());
  // The stored history is what a recompute of these messages prefills: the
  // canonical tokens of the text (not the sampled ids, which may split it
  // otherwise) with their KV computed as a prefill computes it (decode's
  // one-token products sum in another order: its KV differs in the last
  // bits, enough to flip a near-tie of a later greedy answer). So the
  // answer is prefilled again, in one batch, before the turn is stored; on
  // the persister's rewrite thread, off the response path, holding this
  // session's engine slot until it is done.
  r.tokens = core_.chat_template().HistoryTokens(history, history.size());
  const int canonical = static_cast<int>(r.tokens.size());
  int from = 0;  // the first token whose KV is rewritten: the answer's
  while (from < stats_.prompt_tokens && from < canonical && r.tokens[from] == tokens_[from]) {
    ++from;
  }
  r.kv_tokens = std::min(canonical, capacity_);
  if (from < r.kv_tokens) {  // an answer (the prompt's KV is a prefill's)
    // At least two tokens: a single one would take decode's path again.
    from = std::max(0, std::min(from, r.kv_tokens - 2));
    job.rewrite = [backend = slot_.backend.get(), ticket = std::move(ticket_),
                   tokens =
                       std::vector<int>(r.tokens.begin() + from, r.tokens.begin() + r.kv_tokens),
                   from](BackendKvCache& cache) mutable {
      absl::Status s = backend->Forward(cache, tokens, from, {});
      ticket.Release();
      return s;
    };
  }
  // Turn k is the version holding k assistant answers: the same number on
  // every worker, so "latest" never prefers a stale version.
  job.key.set_turn(static_cast<uint32_t>(AssistantMessages(history)));
  job.cache = std::move(cache_);
  job.estimator = std::move(estimator_);
  job.carried_estimate = std::move(carried_estimate_);
  core_.persister().Submit(std::move(job));
}

}  // namespace krul::worker
