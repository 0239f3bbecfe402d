// Sends a trace's conversations to workers in a load shape and records
// every request (chat_stream.h measures each).
//
// Load shapes:
//   trace    open loop: each turn at its trace time / speedup
//   poisson  open loop: conversations start as a Poisson process of `rate`
//            per second
//   closed   `concurrency` users, each running one conversation at a time
// In every shape a conversation's next turn goes out only after the previous
// answer came back plus `think_time_s` (its history holds that answer), so
// an open-loop turn may leave after its trace time: the delay is recorded
// per request (lateness_ms). At most `max_inflight` requests are in flight
// in the open-loop shapes; a turn due while they are all busy waits (and is
// late).
//
// A run ends when every conversation is done, `max_requests` were sent,
// `duration_s` passed (no new requests; those in flight finish, each bounded
// by request_timeout_s), Stop() is called (in-flight requests are
// cancelled), or a request is refused with 401 before any was answered (a
// missing or wrong API key fails every request alike: no more are sent). Every turn of the trace is
// accounted for: sent (ok or failed) or not sent with a reason.
//
// Thread-safe: Run() once from one thread; Stop() and Snapshot() from any.
#ifndef KRUL_LOADTEST_CLIENT_DRIVER_H_
#define KRUL_LOADTEST_CLIENT_DRIVER_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "client/chat_stream.h"
#include "client/endpoint.h"
#include "trace/prompt_synth.h"
#include "trace/trace.h"

namespace krul::loadtest {

enum class LoadShape { kTrace, kPoisson, kClosed };
enum class Routing { kRoundRobin, kRandom, kSticky };

// "trace", "poisson", "closed"; INVALID_ARGUMENT otherwise.
absl::StatusOr<LoadShape> ParseLoadShape(std::string_view name);
std::string_view LoadShapeName(LoadShape shape);
// "round_robin", "random", "sticky"; INVALID_ARGUMENT otherwise.
absl::StatusOr<Routing> ParseRouting(std::string_view name);
std::string_view RoutingName(Routing routing);

struct DriverOptions {
  LoadShape shape = LoadShape::kClosed;
  double speedup = 1.0;     // trace: trace time / speedup
  double rate = 1.0;        // poisson: conversations started per second
  int concurrency = 1;      // closed: users
  int max_inflight = 64;    // trace, poisson: requests in flight at most
  double think_time_s = 0;  // least time between an answer and the next turn
  int max_requests = 0;     // 0: no cap
  double duration_s = 0;    // 0: no cap
  Routing routing = Routing::kRoundRobin;
  std::string mode;    // "krul_mode" of every request; empty: the worker's own
  std::string model;   // "model" of every request; empty: not sent
  std::string run_id;  // conversation ids on the wire are run_id/<trace id>
  // Answer length (max_tokens): the trace's output length scaled by
  // synth.length_scale, else `output_tokens`; at most `max_output_tokens`
  // when > 0; at least 1.
  int output_tokens = 48;
  int max_output_tokens = 0;
  // When > 0: a synthesized message is cut so that the history, the
  // message and max_tokens fit in this many tokens; a conversation with no
  // room left ends ("context_full"). Real text is sent as it is.
  int max_context_tokens = 0;
  double temperature = 0;  // 0: greedy, the same answer in every mode
  uint64_t seed = 1;       // Poisson arrivals and random routing
  double request_timeout_s = 120;
  double connect_timeout_s = 5;
  // Reuse one connection per sending thread. Off by default: an idle
  // keep-alive connection holds one of the worker's HTTP threads (it has
  // max_active + max_queue + 4) until its keep-alive timeout, so a client
  // with more sending threads than that would stall new requests.
  bool keep_alive = false;
  // Sent as "Authorization: Bearer <api_key>" when not empty. Never part of
  // a RequestRecord or RunResult.
  std::string api_key;
  SynthOptions synth;
};

// One request as sent and answered.
struct RequestRecord {
  int index = 0;             // in send order
  std::string conversation;  // the trace's conversation id
  int turn = 0;              // 1-based
  std::string domain;
  int trace_line = 0;
  int trace_record = -1;
  std::string endpoint;
  std::string requested_mode;  // empty: the worker's own
  double scheduled_s = 0;      // when it was due, since the run started
  double sent_s = 0;
  double lateness_ms = 0;  // sent - scheduled
  int history_tokens = 0;  // prompt + answer tokens of the turns before
  int max_tokens = 0;
  ChatResult result;
  // What the worker reported ("krul" object); empty / 0 when absent.
  std::string mode;
  std::string restore;  // none | hit | miss | fallback
  std::string fallback_reason;
  std::string worker_id;
  int restored_tokens = 0;
  double loaded_tokens = 0;
  double recomputed_tokens = 0;
  double loaded_bytes = 0;
  double server_ttft_ms = 0;
  double restore_ms = 0;
  double queue_ms = 0;

  double done_s() const { return sent_s + result.e2e_ms / 1e3; }
};

// Turns never sent, by reason.
struct NotSent {
  int max_requests = 0;  // the request cap was reached
  int duration = 0;      // the duration cap passed
  int stopped = 0;       // Stop() (Ctrl-C)
  int after_error = 0;   // an earlier turn of the conversation failed
  int context_full = 0;  // no room left in max_context_tokens
  int unauthorized = 0;  // the first answers were 401s (no or a wrong API key)

  int total() const {
    return max_requests + duration + stopped + after_error + context_full + unauthorized;
  }
};

struct RunResult {
  std::vector<RequestRecord> records;  // in send order
  int planned = 0;                     // turns in the trace
  NotSent not_sent;
  double wall_s = 0;  // start -> last answer
  bool stopped = false;
  // The run stopped early: a request was refused with 401 before any
  // request succeeded (NotSent::unauthorized counts what was left).
  bool unauthorized = false;
};

// A live view for progress display.
struct Snapshot {
  int planned = 0;  // turns in the trace, or max_requests when smaller
  int sent = 0;
  int ok = 0;
  int failed = 0;
  int in_flight = 0;
  double elapsed_s = 0;
  double recent_ttft_p50_ms = 0;  // over the last 100 answers
};

class Driver {
 public:
  // `trace` is borrowed and must outlive the driver. `endpoints` must not
  // be empty.
  Driver(const Trace& trace, std::vector<Endpoint> endpoints, DriverOptions options);
  ~Driver();

  RunResult Run();
  void Stop();
  Snapshot Snap() const;

 private:
  struct ConversationState;
  struct Due;
  class Worker;

  void WorkerLoop(int thread_index);
  // Builds the request of the conversation's next turn, or ends the
  // conversation (false). Called with mu_ held.
  bool PrepareTurn(int conversation, nlohmann::json* request, RequestRecord* record, int* endpoint)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Finish(int conversation, RequestRecord record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EndConversation(int conversation, int* reason_counter) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AdmitNext(double now_s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  double Now() const;

  const Trace& trace_;
  const std::vector<Endpoint> endpoints_;
  const DriverOptions options_;
  const PromptSynth synth_;
  std::atomic<bool> stop_{false};

  mutable absl::Mutex mu_;
  absl::CondVar changed_;
  std::vector<ConversationState> conversations_ ABSL_GUARDED_BY(mu_);
  std::vector<Due> queue_ ABSL_GUARDED_BY(mu_);  // a min-heap on due time
  uint64_t sequence_ ABSL_GUARDED_BY(mu_) = 0;
  size_t next_admit_ ABSL_GUARDED_BY(mu_) = 0;  // closed loop
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  int sent_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t round_robin_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t random_state_ ABSL_GUARDED_BY(mu_) = 0;
  bool dispatch_closed_ ABSL_GUARDED_BY(mu_) = false;  // a cap or Stop()
  int* close_reason_ ABSL_GUARDED_BY(mu_) = nullptr;   // which NotSent counter
  int answered_ok_ ABSL_GUARDED_BY(mu_) = 0;
  RunResult result_ ABSL_GUARDED_BY(mu_);
  std::vector<double> recent_ttft_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Worker>> workers_;  // fixed in the constructor
  int64_t start_ns_ = 0;
};

// Measures the tokens per synthesized word of the worker at `endpoint` from
// the prompt_tokens it reports for two probe prompts of different lengths
// (the template's own tokens cancel), sending `api_key` as DriverOptions
// does. UNAUTHENTICATED when a probe gets 401; UNAVAILABLE when a probe
// fails otherwise; FAILED_PRECONDITION when the worker reports no usage.
absl::StatusOr<double> MeasureTokensPerWord(const Endpoint& endpoint, const std::string& model,
                                            const std::string& run_id,
                                            const std::string& api_key = "");

}  // namespace krul::loadtest

#endif  // KRUL_LOADTEST_CLIENT_DRIVER_H_
