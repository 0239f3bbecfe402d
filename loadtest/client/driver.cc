#include "client/driver.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace krul::loadtest {
namespace {

using nlohmann::json;

// Tokens the chat template may add around a message (role tags, newline,
// the generation prompt), kept free when a message is cut to the context.
constexpr int kTemplateSlackTokens = 8;
// The word-to-token estimate is an average; a cut message keeps this much
// of its room free for texts that tokenize longer.
constexpr double kRoomUse = 0.9;

uint64_t SplitMix(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Uniform in (0, 1].
double Uniform(uint64_t& state) {
  return (static_cast<double>(SplitMix(state) >> 11) + 1.0) / 9007199254740992.0;
}

// FNV-1a: stable across builds, so sticky routing is reproducible.
uint64_t StableHash(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

}  // namespace

absl::StatusOr<LoadShape> ParseLoadShape(std::string_view name) {
  for (LoadShape s : {LoadShape::kTrace, LoadShape::kPoisson, LoadShape::kClosed}) {
    if (name == LoadShapeName(s)) return s;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown load shape '", std::string(name),
                                                 "'; expected trace, poisson or closed"));
}

std::string_view LoadShapeName(LoadShape shape) {
  switch (shape) {
    case LoadShape::kTrace:
      return "trace";
    case LoadShape::kPoisson:
      return "poisson";
    case LoadShape::kClosed:
      return "closed";
  }
  return "unknown";
}

absl::StatusOr<Routing> ParseRouting(std::string_view name) {
  for (Routing r : {Routing::kRoundRobin, Routing::kRandom, Routing::kSticky}) {
    if (name == RoutingName(r)) return r;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown routing '", std::string(name),
                                                 "'; expected round_robin, random or sticky"));
}

std::string_view RoutingName(Routing routing) {
  switch (routing) {
    case Routing::kRoundRobin:
      return "round_robin";
    case Routing::kRandom:
      return "random";
    case Routing::kSticky:
      return "sticky";
  }
  return "unknown";
}

struct Driver::ConversationState {
  size_t next_turn = 0;
  json history = json::array();  // messages of the answered turns
  int history_tokens = 0;        // as the worker counted them (usage)
  std::string pending_user;      // the message of the turn in flight
  int sticky_endpoint = 0;
  bool ended = false;
};

struct Driver::Due {
  double at_s = 0;
  uint64_t sequence = 0;
  int conversation = 0;

  // std::push_heap builds a max-heap: the earliest due compares greatest.
  bool operator<(const Due& o) const {
    return at_s != o.at_s ? at_s > o.at_s : sequence > o.sequence;
  }
};

// One sending thread's connections, one per endpoint.
class Driver::Worker {
 public:
  Worker(const std::vector<Endpoint>& endpoints, const DriverOptions& options) {
    for (const Endpoint& e : endpoints) {
      chats_.push_back(std::make_unique<StreamingChat>(e, absl::Seconds(options.connect_timeout_s),
                                                       absl::Seconds(options.request_timeout_s),
                                                       options.keep_alive, options.api_key));
    }
  }
  StreamingChat& chat(int endpoint) { return *chats_[endpoint]; }
  void Interrupt() {
    for (auto& c : chats_) c->Interrupt();
  }

 private:
  std::vector<std::unique_ptr<StreamingChat>> chats_;
};

Driver::Driver(const Trace& trace, std::vector<Endpoint> endpoints, DriverOptions options)
    : trace_(trace),
      endpoints_(std::move(endpoints)),
      options_(std::move(options)),
      synth_(options_.synth) {
  // The sending threads' connections exist before Run() so that Stop() may
  // interrupt them from any thread at any time.
  int threads = options_.shape == LoadShape::kClosed ? options_.concurrency : options_.max_inflight;
  threads = std::max(1, std::min(threads, std::max(trace_.turns(), 1)));
  for (int t = 0; t < threads; ++t) {
    workers_.push_back(std::make_unique<Worker>(endpoints_, options_));
  }
}

Driver::~Driver() = default;

double Driver::Now() const {
  const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  return static_cast<double>(now - start_ns_) / 1e9;
}

void Driver::Stop() {
  stop_.store(true);
  // Requests waiting for their first byte return now.
  for (auto& w : workers_) w->Interrupt();
  absl::MutexLock lock(&mu_);
  changed_.SignalAll();
}

Snapshot Driver::Snap() const {
  absl::MutexLock lock(&mu_);
  Snapshot s;
  // The bar's end: the request cap when there is one.
  s.planned = options_.max_requests > 0 ? std::min(result_.planned, options_.max_requests)
                                        : result_.planned;
  s.sent = sent_;
  s.in_flight = in_flight_;
  for (const RequestRecord& r : result_.records) (r.result.ok() ? s.ok : s.failed) += 1;
  s.elapsed_s = start_ns_ == 0 ? 0 : Now();
  if (!recent_ttft_.empty()) {
    std::vector<double> v = recent_ttft_;
    std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
    s.recent_ttft_p50_ms = v[v.size() / 2];
  }
  return s;
}

void Driver::AdmitNext(double now_s) {
  if (next_admit_ >= conversations_.size() || dispatch_closed_) return;
  queue_.push_back({now_s, sequence_++, static_cast<int>(next_admit_++)});
  std::push_heap(queue_.begin(), queue_.end());
}

void Driver::EndConversation(int conversation, int* reason_counter) {
  ConversationState& s = conversations_[conversation];
  if (s.ended) return;
  const size_t turns = trace_.conversations[conversation].turns.size();
  *reason_counter += static_cast<int>(turns - std::min(s.next_turn, turns));
  s.next_turn = turns;
  s.ended = true;
  if (options_.shape == LoadShape::kClosed) AdmitNext(Now());
}

bool Driver::PrepareTurn(int conversation, json* request, RequestRecord* record, int* endpoint) {
  ConversationState& s = conversations_[conversation];
  const Conversation& c = trace_.conversations[conversation];
  const Turn& turn = c.turns[s.next_turn];
  int max_tokens =
      turn.output_tokens > 0 ? synth_.ScaledTokens(turn.output_tokens) : options_.output_tokens;
  if (options_.max_output_tokens > 0) max_tokens = std::min(max_tokens, options_.max_output_tokens);
  max_tokens = std::max(max_tokens, 1);
  std::string text;
  if (turn.synthesized()) {
    int room = 0;  // 0: no limit
    if (options_.max_context_tokens > 0) {
      const int free =
          options_.max_context_tokens - s.history_tokens - max_tokens - kTemplateSlackTokens;
      room = static_cast<int>(free * kRoomUse);
      if (room < 1) {
        EndConversation(conversation, &result_.not_sent.context_full);
        return false;
      }
    }
    text = synth_.MessageText(turn, room);
  } else {
    if (options_.max_context_tokens > 0 &&
        s.history_tokens + max_tokens + kTemplateSlackTokens > options_.max_context_tokens) {
      EndConversation(conversation, &result_.not_sent.context_full);
      return false;
    }
    text = turn.text;
  }
  json messages = s.history;
  messages.push_back({{"role", "user"}, {"content", text}});
  *request = {{"messages", std::move(messages)},
              {"max_tokens", max_tokens},
              {"temperature", options_.temperature},
              {"conversation_id", absl::StrCat(options_.run_id, "/", c.id)}};
  if (!options_.mode.empty()) (*request)["krul_mode"] = options_.mode;
  if (!options_.model.empty()) (*request)["model"] = options_.model;
  if (options_.temperature > 0) (*request)["seed"] = options_.seed + sent_;
  s.pending_user = std::move(text);

  switch (options_.routing) {
    case Routing::kRoundRobin:
      *endpoint = static_cast<int>(round_robin_++ % endpoints_.size());
      break;
    case Routing::kRandom:
      *endpoint = static_cast<int>(SplitMix(random_state_) % endpoints_.size());
      break;
    case Routing::kSticky:
      *endpoint = s.sticky_endpoint;
      break;
  }
  record->index = sent_;
  record->conversation = c.id;
  record->turn = static_cast<int>(s.next_turn) + 1;
  record->domain = c.domain;
  record->trace_line = turn.line;
  record->trace_record = turn.record;
  record->endpoint = endpoints_[*endpoint].Name();
  record->requested_mode = options_.mode;
  record->history_tokens = s.history_tokens;
  record->max_tokens = max_tokens;
  return true;
}

void Driver::Finish(int conversation, RequestRecord record) {
  ConversationState& s = conversations_[conversation];
  const Conversation& c = trace_.conversations[conversation];
  const bool ok = record.result.ok();
  const bool record_cancelled = record.result.error_kind == "cancelled";
  if (ok) {
    ++answered_ok_;
    recent_ttft_.push_back(record.result.ttft_ms);
    if (recent_ttft_.size() > 100) recent_ttft_.erase(recent_ttft_.begin());
    s.history.push_back({{"role", "user"}, {"content", std::move(s.pending_user)}});
    s.history.push_back({{"role", "assistant"}, {"content", record.result.content}});
    if (record.result.prompt_tokens > 0) {
      s.history_tokens = record.result.prompt_tokens + record.result.completion_tokens;
    }
    ++s.next_turn;
  }
  const double done = record.done_s();
  const bool refused = record.result.error_kind == "unauthorized";
  result_.records.push_back(std::move(record));
  if (refused && answered_ok_ == 0 && !dispatch_closed_) {
    // A missing or wrong key fails every request alike: sending the rest
    // of the trace would only hammer the worker with 401s.
    dispatch_closed_ = true;
    close_reason_ = &result_.not_sent.unauthorized;
    result_.unauthorized = true;
  }
  if (!ok) {
    ++s.next_turn;  // the failed turn was sent; the rest of the conversation is not
    EndConversation(conversation,
                    record_cancelled ? &result_.not_sent.stopped : &result_.not_sent.after_error);
    return;
  }
  if (s.next_turn >= c.turns.size()) {
    s.ended = true;
    if (options_.shape == LoadShape::kClosed) AdmitNext(Now());
    return;
  }
  double due = done + options_.think_time_s;
  const Turn& next = c.turns[s.next_turn];
  if (options_.shape == LoadShape::kTrace && next.arrival_ms.has_value()) {
    due = std::max(due, *next.arrival_ms / 1e3 / options_.speedup);
  }
  queue_.push_back({due, sequence_++, conversation});
  std::push_heap(queue_.begin(), queue_.end());
}

void Driver::WorkerLoop(int thread_index) {
  Worker& worker = *workers_[thread_index];
  absl::MutexLock lock(&mu_);
  while (true) {
    // Wait for a due turn, a cap, or the end.
    int conversation = -1;
    double due_s = 0;
    while (true) {
      const double now = Now();
      if (!dispatch_closed_) {
        if (stop_.load()) {
          dispatch_closed_ = true;
          close_reason_ = &result_.not_sent.stopped;
        } else if (options_.duration_s > 0 && now >= options_.duration_s) {
          dispatch_closed_ = true;
          close_reason_ = &result_.not_sent.duration;
        }
      }
      if (dispatch_closed_) {
        changed_.SignalAll();
        return;
      }
      if (queue_.empty()) {
        if (in_flight_ == 0) {  // nothing due and nothing that could add a turn
          changed_.SignalAll();
          return;
        }
        changed_.WaitWithTimeout(&mu_, absl::Milliseconds(100));
        continue;
      }
      const Due& top = queue_.front();
      if (top.at_s > now) {
        double wake = std::min(top.at_s, now + 0.1);
        if (options_.duration_s > 0) wake = std::min(wake, options_.duration_s);
        changed_.WaitWithTimeout(&mu_, absl::Seconds(std::max(wake - now, 0.0)));
        continue;
      }
      std::pop_heap(queue_.begin(), queue_.end());
      conversation = queue_.back().conversation;
      due_s = queue_.back().at_s;
      queue_.pop_back();
      break;
    }
    json request;
    RequestRecord record;
    int endpoint = 0;
    if (!PrepareTurn(conversation, &request, &record, &endpoint)) {
      changed_.SignalAll();
      continue;
    }
    record.scheduled_s = due_s;
    record.sent_s = Now();
    record.lateness_ms = std::max(0.0, (record.sent_s - due_s) * 1e3);
    ++sent_;
    ++in_flight_;
    if (options_.max_requests > 0 && sent_ >= options_.max_requests) {
      dispatch_closed_ = true;
      close_reason_ = &result_.not_sent.max_requests;
    }
    mu_.Unlock();
    record.result = worker.chat(endpoint).Send(std::move(request), stop_);
    const json& k = record.result.krul;
    record.mode = StringField(k, "mode");
    record.restore = StringField(k, "restore");
    record.fallback_reason = StringField(k, "fallback_reason");
    record.worker_id = StringField(k, "worker_id");
    record.restored_tokens = static_cast<int>(NumberField(k, "restored_tokens"));
    record.loaded_tokens = NumberField(k, "loaded_tokens");
    record.recomputed_tokens = NumberField(k, "recomputed_tokens");
    record.loaded_bytes = NumberField(k, "loaded_bytes");
    record.server_ttft_ms = NumberField(k, "ttft_ms");
    record.restore_ms = NumberField(k, "restore_ms");
    record.queue_ms = NumberField(k, "queue_ms");
    mu_.Lock();
    --in_flight_;
    Finish(conversation, std::move(record));
    changed_.SignalAll();
  }
}

RunResult Driver::Run() {
  const size_t n = trace_.conversations.size();
  {
    absl::MutexLock lock(&mu_);
    start_ns_ = std::chrono::duration_cast<std::chrono::nanoseconds>(
                    std::chrono::steady_clock::now().time_since_epoch())
                    .count();
    random_state_ = options_.seed;
    result_.planned = trace_.turns();
    conversations_.resize(n);
    for (size_t c = 0; c < n; ++c) {
      conversations_[c].sticky_endpoint =
          static_cast<int>(StableHash(trace_.conversations[c].id) % endpoints_.size());
    }
    switch (options_.shape) {
      case LoadShape::kTrace:
        for (size_t c = 0; c < n; ++c) {
          const auto& arrival = trace_.conversations[c].turns.front().arrival_ms;
          const double at =
              arrival.has_value() ? std::max(0.0, *arrival) / 1e3 / options_.speedup : 0.0;
          queue_.push_back({at, sequence_++, static_cast<int>(c)});
        }
        std::make_heap(queue_.begin(), queue_.end());
        break;
      case LoadShape::kPoisson: {
        uint64_t arrivals = options_.seed ^ 0x706f6973736f6eull;  // "poisson"
        double t = 0;
        for (size_t c = 0; c < n; ++c) {
          queue_.push_back({t, sequence_++, static_cast<int>(c)});
          t += -std::log(Uniform(arrivals)) / options_.rate;
        }
        std::make_heap(queue_.begin(), queue_.end());
        break;
      }
      case LoadShape::kClosed:
        for (int u = 0; u < options_.concurrency; ++u) AdmitNext(0);
        break;
    }
  }
  std::vector<std::thread> pool;
  for (size_t t = 0; t < workers_.size(); ++t) {
    pool.emplace_back([this, t] { WorkerLoop(static_cast<int>(t)); });
  }
  for (std::thread& t : pool) t.join();

  absl::MutexLock lock(&mu_);
  // Turns of conversations that were cut off by a cap or by Stop().
  for (size_t c = 0; c < n; ++c) {
    if (conversations_[c].ended) continue;
    EndConversation(static_cast<int>(c),
                    close_reason_ != nullptr ? close_reason_ : &result_.not_sent.stopped);
  }
  std::sort(result_.records.begin(), result_.records.end(),
            [](const RequestRecord& a, const RequestRecord& b) { return a.index < b.index; });
  double last = 0;
  for (const RequestRecord& r : result_.records) last = std::max(last, r.done_s());
  result_.wall_s = last;
  result_.stopped = stop_.load();
  return result_;
}

absl::StatusOr<double> MeasureTokensPerWord(const Endpoint& endpoint, const std::string& model,
                                            const std::string& run_id, const std::string& api_key) {
  StreamingChat chat(endpoint, absl::Seconds(5), absl::Seconds(120), /*keep_alive=*/false, api_key);
  const PromptSynth synth(SynthOptions{});
  std::atomic<bool> never{false};
  constexpr int kShort = 10, kLong = 50;
  int tokens[2] = {0, 0};
  for (int i = 0; i < 2; ++i) {
    const int words = i == 0 ? kShort : kLong;
    json request = {
        {"messages", {{{"role", "user"}, {"content", synth.BlockText(0xCA11B, words)}}}},
        {"max_tokens", 1},
        {"temperature", 0},
        {"conversation_id", absl::StrCat(run_id, "/probe-", words)}};
    if (!model.empty()) request["model"] = model;
    ChatResult r = chat.Send(request, never);
    if (r.error_kind == "unauthorized") {
      return absl::UnauthenticatedError(
          absl::StrCat("token probe to ", endpoint.Name(), " refused: ", r.error));
    }
    if (!r.ok()) {
      return absl::UnavailableError(absl::StrCat("token probe to ", endpoint.Name(), " failed (",
                                                 r.error_kind, "): ", r.error));
    }
    if (r.prompt_tokens <= 0) {
      return absl::FailedPreconditionError(
          absl::StrCat(endpoint.Name(), " reports no usage.prompt_tokens; pass --tokens_per_word"));
    }
    tokens[i] = r.prompt_tokens;
  }
  const double per_word = static_cast<double>(tokens[1] - tokens[0]) / (kLong - kShort);
  if (per_word <= 0) {
    return absl::FailedPreconditionError(absl::StrCat("the token probes gave ", tokens[0], " and ",
                                                      tokens[1],
                                                      " prompt tokens; pass --tokens_per_word"));
  }
  return per_word;
}

}  // namespace krul::loadtest
