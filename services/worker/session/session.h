// One chat turn on one engine slot:
//
//   Begin:  find the conversation's newest stored version (by its
//           conversation_id, or by the digest of the message prefix up to
//           the last assistant message) -> check it belongs to this model,
//           template and message prefix -> tokenize the turn -> restore its
//           KV with the Restorer (recompute + load per layer) while the new
//           messages are prefilled -> sample the first token. The slot's
//           compute backend (CPU or CUDA) does the work.
//           A miss prefills the whole prompt. A store that is down or slow,
//           a missing block or a checksum failure falls back to prefilling
//           the whole history (counted by reason): the KV used is always
//           either verified stored KV or freshly computed, never guessed.
//   Next:   one decode step with the similarity estimator observing (krul).
//   Commit: after the answer was delivered, hands the KV, the token ids and
//           the estimator to the persister; the response never waits for
//           selection, compression or the store. The ids stored are the
//           canonical tokens of the history's text (ChatTemplate), what a
//           recompute of the same messages prefills, and the answer's KV is
//           prefilled again in one batch first (the persister's rewrite,
//           holding this turn's engine slot until done), so a restored turn
//           and a recomputed one give the same tokens.
//
// Not thread-safe: one thread drives a session (the request's). Destroying
// it releases the engine slot.
#ifndef KRUL_SERVICES_WORKER_SESSION_SESSION_H_
#define KRUL_SERVICES_WORKER_SESSION_SESSION_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "krul/compress/backend_estimator.h"
#include "krul/engine/backend_kv_cache.h"
#include "krul/engine/sampler.h"
#include "krul/restore/restore_mode.h"
#include "krul/restore/restorer.h"
#include "krul/v1/kvstore.pb.h"
#include "worker/api/openai_api.h"
#include "worker/core/admission.h"
#include "worker/core/worker_core.h"
#include "worker/session/session_record.h"

namespace krul::worker {

class Session {
 public:
  // See WorkerCore::StartChat (which calls it with a ticket).
  static absl::StatusOr<std::unique_ptr<Session>> Begin(WorkerCore& core, AdmissionTicket ticket,
                                                        const ChatRequest& request,
                                                        absl::Time accepted);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Emits the pending token and computes the next one. Returns the text
  // that became complete (possibly empty: a character split over byte
  // tokens). After done() it returns "". Engine errors are INTERNAL; the
  // session is then failed and Commit does nothing.
  absl::StatusOr<std::string> Next();
  bool done() const { return done_; }
  // "stop" (the model ended its answer) or "length" (max_tokens or the
  // context is full); empty until done.
  const std::string& finish_reason() const { return finish_reason_; }
  const CompletionStats& stats() const { return stats_; }
  const std::vector<int>& completion_tokens() const { return completion_; }
  // The answer so far, valid UTF-8 (what the client receives).
  const std::string& content() const { return content_; }
  // The conversation id the turn is stored under (what a client that wants
  // to continue by id should send; "h:..." when keyed by digest).
  const std::string& store_id() const { return store_id_; }

  // Persists the finished turn in the background. Does nothing unless
  // done() and not failed; at most once.
  void Commit();

 private:
  // The stored version a turn may continue from (session.cc).
  struct StoredTurn;

  Session(WorkerCore& core, AdmissionTicket ticket, const ChatRequest& request);
  // Up to the first token, in named steps (in this order).
  absl::Status Start(absl::Time accepted);
  absl::Status InitTurn();
  StoredTurn LookupStoredTurn();
  std::string_view ValidateStoredTurn(const SessionRecord& record,
                                      const v1::Manifest& manifest) const;
  absl::Status TokenizeTurn(const StoredTurn& stored, std::vector<int>& new_tokens);
  absl::Status CreateTurnState();
  bool RestoreStoredTurn(StoredTurn& stored, const std::vector<int>& new_tokens);
  void RecordRestoreHit(const RestoreStats& restore, int history);
  absl::Status FallBackToPrefill(const StoredTurn& stored);
  absl::Status SampleFirstToken(absl::Time accepted);
  // Prefills tokens_[0, n) from scratch (a miss or a fallback).
  absl::Status PrefillAll();

  WorkerCore& core_;
  AdmissionTicket ticket_;
  EngineSlot& slot_;
  const ChatRequest request_;
  const RestoreMode mode_;
  std::string explicit_id_;  // "c:" + conversation_id, or empty
  std::string store_id_;

  std::unique_ptr<BackendKvCache> cache_;        // the slot backend's
  std::unique_ptr<BackendEstimator> estimator_;  // krul mode only
  // The restored version's estimate (its turns before this one), handed to
  // the persister with this turn's; none after a miss or a fallback.
  std::optional<SimilarityEstimate> carried_estimate_;
  std::optional<Sampler> sampler_;
  std::vector<float> logits_;
  std::vector<int> tokens_;  // history + prompt + generated
  int pos_ = 0;              // tokens with KV in cache_
  int capacity_ = 0;
  int next_ = -1;  // sampled, not yet emitted
  std::vector<int> completion_;
  std::string content_;
  Utf8Stream utf8_;
  CompletionStats stats_;
  std::string finish_reason_;
  bool done_ = false;
  bool failed_ = false;
  bool committed_ = false;
  StorePin pin_;  // the lease on the restored version (lease_id 0: none)
};

}  // namespace krul::worker

#endif  // KRUL_SERVICES_WORKER_SESSION_SESSION_H_
