// Transfers of the UCX transport, in one of three modes (see
// ucx_transport.h): direct (memcpy through a shared-memory mapping of the
// peer's region), messages (requests served by the peer's worker) and rma
// (ucp_get_nbx / ucp_put_nbx, then ucp_ep_flush_nbx so that a write is
// remotely complete). Segments longer than max_op_bytes are split so that
// several UCX operations are in flight at once.
#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "ucx_transport_internal.h"

namespace krul::ucx_internal {
namespace {

// How long Wait keeps polling the worker without seeing progress before it
// sleeps on the worker's event fd. Zero: after one fruitless burst of
// progress calls. Measured on 2 loaded cores, any spinning took CPU from
// the kernel's TCP work and lowered bandwidth (krul-bench-transport).
constexpr absl::Duration kSpinBeforeSleep = absl::ZeroDuration();

enum class Mode { kDirect, kMessages, kRma };

class UcxTransfer final : public Transfer, public OpSink {
 public:
  UcxTransfer(TransferOp op, UcxRegion& local, UcxRemoteRegion& remote,
              std::span<const TransferSegment> segments)
      : ep_(remote.ep()),
        core_(ep_->core()),
        op_(op),
        local_(local),
        remote_(remote),
        segments_(segments.begin(), segments.end()) {
    using Protocol = UcxTransportOptions::Protocol;
    if (core_.protocol() == Protocol::kRma) {
      mode_ = Mode::kRma;
    } else if (core_.protocol() == Protocol::kAuto && remote.mapped() != nullptr) {
      mode_ = Mode::kDirect;
    } else {
      mode_ = Mode::kMessages;
    }
    const uint64_t max_op = core_.max_op_bytes();
    for (size_t i = 0; i < segments_.size(); ++i) {
      const TransferSegment& s = segments_[i];
      total_bytes_ += s.length_bytes;
      for (uint64_t done = 0; done < s.length_bytes; done += max_op) {
        ops_.push_back(Op{i, done, std::min<uint64_t>(max_op, s.length_bytes - done), {}});
      }
    }
    for (Op& o : ops_) o.am.sink = this;
    flush_.sink = this;
  }

  ~UcxTransfer() override {
    // UCX still reads or writes our buffers and will call back into this
    // object: wait for it. Peer failure detection bounds this wait when the
    // peer dies.
    if (state_ == TransferState::kInFlight) (void)Wait(absl::InfiniteDuration());
  }

  absl::Status Post() override {
    if (state_ == TransferState::kInFlight) {
      return absl::FailedPreconditionError("Post on a transfer that is already in flight");
    }
    if (absl::Status s = transport_internal::CheckNotExpired(remote_.expires()); !s.ok()) {
      return s;
    }
    if (absl::Status s = ep_->status(); !s.ok()) return s;

    hook_ = core_.hook();
    staging_.clear();
    if (op_ == TransferOp::kWrite && hook_) {
      // Corrupt a private copy, never the caller's buffer.
      staging_.resize(segments_.size());
      for (size_t i = 0; i < segments_.size(); ++i) {
        const uint8_t* src = local_.data() + segments_[i].local_offset;
        staging_[i].assign(src, src + segments_[i].length_bytes);
        hook_(op_, std::span<uint8_t>(staging_[i]));
      }
    }
    // A read's observer sees pieces right as they are copied, unless a
    // tamper hook must see (and corrupt) them first: then in Finish.
    observed_in_post_ = mode_ == Mode::kDirect && observer_ && !hook_;
    if (mode_ == Mode::kDirect) {
      // The mapping stays valid while remote_ holds the rkey; no UCX call.
      for (size_t i = 0; i < segments_.size(); ++i) {
        const TransferSegment& s = segments_[i];
        uint8_t* remote = remote_.mapped() + s.remote_offset;
        uint8_t* local = local_.data() + s.local_offset;
        if (op_ == TransferOp::kWrite) {
          std::memcpy(remote, Source(i), s.length_bytes);
        } else if (!observed_in_post_) {
          std::memcpy(local, remote, s.length_bytes);
        } else {
          // Copy and observe piece by piece: the observer reads each piece
          // from cache right after the copy wrote it.
          for (uint64_t done = 0; done < s.length_bytes;) {
            const uint64_t n = std::min(piece_bytes_, s.length_bytes - done);
            std::memcpy(local + done, remote + done, n);
            observer_(i, done, std::span<const uint8_t>(local + done, n));
            done += n;
          }
        }
      }
    }

    absl::MutexLock lock(&core_.mu());
    pending_ = 0;
    error_ = absl::OkStatus();
    state_ = TransferState::kInFlight;
    if (mode_ == Mode::kDirect) return absl::OkStatus();
    for (Op& o : ops_) {
      const TransferSegment& s = segments_[o.segment];
      uint8_t* local = (op_ == TransferOp::kRead ? local_.data() + s.local_offset
                                                 : const_cast<uint8_t*>(Source(o.segment))) +
                       o.offset;
      const uint64_t remote = remote_.base_address() + s.remote_offset + o.offset;
      // The registration we have spares UCX a lookup (not for staging copies).
      ucp_mem_h memh = staging_.empty() ? local_.memh() : nullptr;
      absl::Status posted = mode_ == Mode::kRma ? PostRmaLocked(o, local, remote, memh)
                                                : PostMessageLocked(o, local, remote, memh);
      if (!posted.ok()) {
        Record(posted);
        break;
      }
    }
    if (mode_ == Mode::kRma && op_ == TransferOp::kWrite && error_.ok()) {
      // Put completion is local (the source may be reused); the flush
      // completes once every put on the endpoint reached the target.
      ucp_request_param_t param = CallbackParam(&flush_);
      Record(Track(ucp_ep_flush_nbx(ep_->ep(), &param), "ucp_ep_flush_nbx"));
    }
    return absl::OkStatus();
  }

  TransferState Poll() override {
    if (state_ != TransferState::kInFlight) return state_;
    bool complete;
    {
      absl::MutexLock lock(&core_.mu());
      if (pending_ > 0) core_.ProgressLocked();
      complete = pending_ == 0;
    }
    if (complete) Finish();
    return state_;
  }

  absl::Status Wait(absl::Duration timeout) override {
    if (state_ == TransferState::kPrepared) {
      return absl::FailedPreconditionError("Wait on a transfer that was never posted");
    }
    const absl::Time deadline =
        timeout == absl::InfiniteDuration() ? absl::InfiniteFuture() : absl::Now() + timeout;
    absl::Time last_progress = absl::Now();
    struct WaiterScope {
      explicit WaiterScope(UcxCore& c) : core(c) { core.AddWaiter(); }
      ~WaiterScope() { core.RemoveWaiter(); }
      UcxCore& core;
    } waiter(core_);
    while (state_ == TransferState::kInFlight) {
      bool complete = false;
      bool progressed = false;
      {
        absl::MutexLock lock(&core_.mu());
        // A burst of progress calls per lock hold; other threads (the
        // progress thread, other waiters) get the worker in between.
        for (int i = 0; i < 16 && pending_ > 0; ++i) progressed |= core_.ProgressLocked();
        complete = pending_ == 0;
      }
      if (complete) {
        Finish();
        break;
      }
      const absl::Time now = absl::Now();
      if (now >= deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat("transfer of ", total_bytes_, " bytes still in flight"));
      }
      if (progressed) {
        last_progress = now;
      } else if (now - last_progress > kSpinBeforeSleep) {
        core_.WaitForEvents(std::min(deadline - now, absl::Milliseconds(1)));
      }
    }
    return status_;
  }

  absl::Status ObserveLanding(LandingObserver observer, uint64_t piece_bytes) override {
    if (absl::Status s = transport_internal::CheckObserveLanding(op_, state_, piece_bytes);
        !s.ok()) {
      return s;
    }
    observer_ = std::move(observer);
    piece_bytes_ = piece_bytes;
    return absl::OkStatus();
  }

  absl::Status status() const override {
    if (state_ == TransferState::kPrepared || state_ == TransferState::kInFlight) {
      return absl::UnknownError("transfer not complete");
    }
    return status_;
  }
  TransferState state() const override { return state_; }
  TransferOp op() const override { return op_; }
  uint64_t total_bytes() const override { return total_bytes_; }

  // OpSink: runs with core_.mu() held (UCX callbacks, or our own calls).
  void OnOpComplete(const absl::Status& status) override ABSL_NO_THREAD_SAFETY_ANALYSIS {
    Record(status);
    --pending_;
  }

 private:
  struct Op {
    size_t segment;   // index into segments_
    uint64_t offset;  // within the segment
    uint64_t length;
    AmOp am;  // user data of the UCX callbacks
  };

  const uint8_t* Source(size_t segment) const {
    return staging_.empty() ? local_.data() + segments_[segment].local_offset
                            : staging_[segment].data();
  }

  static ucp_request_param_t CallbackParam(AmOp* op) {
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    param.cb.send = &UcxTransfer::OnRmaDone;
    param.user_data = op;
    return param;
  }

  static void OnRmaDone(void* request, ucs_status_t status, void* user_data) {
    auto* op = static_cast<AmOp*>(user_data);
    op->sink->OnOpComplete(FromUcs(status, "UCX RMA operation"));
    ucp_request_free(request);
  }

  absl::Status PostRmaLocked(Op& o, uint8_t* local, uint64_t remote, ucp_mem_h memh)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(core_.mu()) {
    ucp_request_param_t param = CallbackParam(&o.am);
    if (memh != nullptr) {
      param.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
      param.memh = memh;
    }
    ucs_status_ptr_t request =
        op_ == TransferOp::kRead
            ? ucp_get_nbx(ep_->ep(), local, o.length, remote, remote_.rkey(), &param)
            : ucp_put_nbx(ep_->ep(), local, o.length, remote, remote_.rkey(), &param);
    return Track(request, op_ == TransferOp::kRead ? "ucp_get_nbx" : "ucp_put_nbx");
  }

  absl::Status PostMessageLocked(Op& o, uint8_t* local, uint64_t remote, ucp_mem_h memh)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(core_.mu()) {
    o.am.header = AmRequest{0, remote_.region_id(), remote, o.length, remote_.grant_id()};
    absl::StatusOr<int> completions = SendRequestLocked(core_, *ep_, op_, &o.am, local, memh);
    if (!completions.ok()) return completions.status();
    pending_ += *completions;
    return absl::OkStatus();
  }

  // Accounts for one ucp call's result.
  absl::Status Track(ucs_status_ptr_t request, const char* what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(core_.mu()) {
    if (request == nullptr) return absl::OkStatus();  // completed in place
    if (UCS_PTR_IS_ERR(request)) return FromUcs(UCS_PTR_STATUS(request), what);
    ++pending_;
    return absl::OkStatus();
  }

  void Record(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(core_.mu()) {
    if (!status.ok() && error_.ok()) error_ = status;
  }

  // Called once pending_ reached 0 (no more callbacks can touch us).
  void Finish() {
    absl::Status error;
    {
      absl::MutexLock lock(&core_.mu());
      error = error_;
    }
    if (!error.ok()) {
      // A failed endpoint explains every error on it; report that.
      absl::Status ep = ep_->status();
      status_ = ep.ok() ? error : ep;
      state_ = TransferState::kFailed;
      return;
    }
    if (op_ == TransferOp::kRead && hook_) {
      for (const TransferSegment& s : segments_) {
        hook_(op_, std::span<uint8_t>(local_.data() + s.local_offset, s.length_bytes));
      }
    }
    if (observer_ && !observed_in_post_) {
      for (size_t i = 0; i < segments_.size(); ++i) {
        const TransferSegment& s = segments_[i];
        transport_internal::ObservePieces(observer_, i, local_.data() + s.local_offset, 0,
                                          s.length_bytes, piece_bytes_);
      }
    }
    status_ = absl::OkStatus();
    state_ = TransferState::kDone;
  }

  // Keeps the endpoint (and through it the worker) alive while in flight.
  std::shared_ptr<UcxEpState> ep_;
  UcxCore& core_;
  const TransferOp op_;
  Mode mode_;
  UcxRegion& local_;
  UcxRemoteRegion& remote_;
  const std::vector<TransferSegment> segments_;
  std::vector<Op> ops_;  // never resized after construction: UCX holds &ops_[i].am
  AmOp flush_;
  uint64_t total_bytes_ = 0;

  TransferState state_ = TransferState::kPrepared;
  absl::Status status_;
  TamperHook hook_;
  LandingObserver observer_;  // kRead only
  uint64_t piece_bytes_ = 0;
  bool observed_in_post_ = false;              // this Post already showed the pieces
  std::vector<std::vector<uint8_t>> staging_;  // kWrite with a hook: what is sent
  int pending_ ABSL_GUARDED_BY(core_.mu()) = 0;
  absl::Status error_ ABSL_GUARDED_BY(core_.mu());
};

}  // namespace

std::unique_ptr<Transfer> NewUcxTransfer(TransferOp op, UcxRegion& local, UcxRemoteRegion& remote,
                                         std::span<const TransferSegment> segments) {
  return std::make_unique<UcxTransfer>(op, local, remote, segments);
}

}  // namespace krul::ucx_internal
