// The active-message protocol of the UCX transport (see the message table
// in ucx_transport_internal.h). The server side checks every request
// against the regions it serves; the client side matches replies to the
// requests it has pending. Every handler runs inside ucp_worker_progress,
// with UcxCore::mu() held.
#include <cstring>

#include "absl/strings/str_cat.h"
#include "ucx_transport_internal.h"

namespace krul::ucx_internal {
namespace {

absl::Status FromPeerCode(int32_t code, uint64_t length) {
  if (code < 0 || code > static_cast<int32_t>(absl::StatusCode::kUnauthenticated)) {
    return absl::UnavailableError(absl::StrCat("transport protocol error: peer sent code ", code));
  }
  const auto status_code = static_cast<absl::StatusCode>(code);
  switch (status_code) {
    case absl::StatusCode::kOk:
      return absl::OkStatus();
    case absl::StatusCode::kAborted:
      return absl::AbortedError("the peer no longer serves the region (grant revoked)");
    case absl::StatusCode::kOutOfRange:
      return absl::OutOfRangeError(
          absl::StrCat("the peer refused ", length, " bytes outside its region"));
    default:
      return absl::Status(status_code, "the peer refused the transfer");
  }
}

// ------------------------------------------------------------ server side

// A server-side send or receive in flight; freed when it completes.
struct ServerOp {
  UcxCore* core;
  uint64_t region_id;  // region whose memory the operation touches
  bool holds_region;   // ServedOpStarted was called for region_id
  ucp_ep_h reply_ep;
  AmReply reply;  // header of the reply, alive until sent
};

void OnServerSendDone(void* request, ucs_status_t /*status*/, void* user_data) {
  // A failed reply means the client is gone; its endpoint error handling
  // fails the client's transfer, so nothing more to do here.
  auto* op = static_cast<ServerOp*>(user_data);
  if (op->holds_region) op->core->ServedOpDone(op->region_id);
  delete op;
  ucp_request_free(request);
}

// Sends `reply` (+ `payload` from a served region) back to the client.
void SendReplyLocked(UcxCore& core, ucp_ep_h reply_ep, AmId id, const AmReply& reply,
                     const uint8_t* payload, uint64_t region_id)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(core.mu()) {
  auto* op = new ServerOp{&core, region_id, payload != nullptr, reply_ep, reply};
  if (op->holds_region) core.ServedOpStarted(region_id);
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.send = &OnServerSendDone;
  param.user_data = op;
  ucs_status_ptr_t request = ucp_am_send_nbx(reply_ep, id, &op->reply, sizeof(op->reply), payload,
                                             payload != nullptr ? reply.length : 0, &param);
  if (request == nullptr || UCS_PTR_IS_ERR(request)) {
    if (op->holds_region) core.ServedOpDone(region_id);
    delete op;
  }
}

bool ParseRequest(const void* header, size_t header_length, const ucp_am_recv_param_t* param,
                  AmRequest* request) {
  if (header_length != sizeof(AmRequest)) return false;
  if (!(param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) || param->reply_ep == nullptr) {
    return false;
  }
  std::memcpy(request, header, sizeof(AmRequest));
  return true;
}

ucs_status_t OnReadRequest(void* arg, const void* header, size_t header_length, void* /*data*/,
                           size_t /*length*/, const ucp_am_recv_param_t* param) {
  UcxCore& core = *static_cast<UcxCore*>(arg);
  core.mu().AssertHeld();
  AmRequest request;
  // Malformed requests are dropped: without a well-formed header there is
  // nobody to answer. (Returning OK also drops any rendezvous payload.)
  if (!ParseRequest(header, header_length, param, &request)) return UCS_OK;
  uint8_t* source = nullptr;
  const absl::StatusCode code = core.CheckServed(request.region_id, request.grant_id,
                                                 request.address, request.length, &source);
  const bool ok = code == absl::StatusCode::kOk;
  const AmReply reply{request.request_id, static_cast<int32_t>(code), 0, ok ? request.length : 0};
  SendReplyLocked(core, param->reply_ep, kAmReadReply, reply, ok ? source : nullptr,
                  request.region_id);
  return UCS_OK;
}

void FinishServerWrite(ServerOp* op, ucs_status_t status) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  UcxCore& core = *op->core;
  core.ServedOpDone(op->region_id);
  AmReply reply = op->reply;
  if (status != UCS_OK) reply.code = static_cast<int32_t>(absl::StatusCode::kUnavailable);
  SendReplyLocked(core, op->reply_ep, kAmWriteReply, reply, nullptr, op->region_id);
  delete op;
}

void OnServerWriteData(void* request, ucs_status_t status, size_t /*length*/, void* user_data) {
  FinishServerWrite(static_cast<ServerOp*>(user_data), status);
  ucp_request_free(request);
}

ucs_status_t OnWriteRequest(void* arg, const void* header, size_t header_length, void* data,
                            size_t length, const ucp_am_recv_param_t* param) {
  UcxCore& core = *static_cast<UcxCore*>(arg);
  core.mu().AssertHeld();
  AmRequest request;
  if (!ParseRequest(header, header_length, param, &request)) return UCS_OK;
  uint8_t* target = nullptr;
  absl::StatusCode code = core.CheckServed(request.region_id, request.grant_id, request.address,
                                           request.length, &target);
  if (code == absl::StatusCode::kOk && length != request.length) {
    code = absl::StatusCode::kInvalidArgument;
  }
  const AmReply reply{request.request_id, static_cast<int32_t>(code), 0, 0};
  if (code != absl::StatusCode::kOk) {
    SendReplyLocked(core, param->reply_ep, kAmWriteReply, reply, nullptr, 0);
    return UCS_OK;  // drops a rendezvous payload unread
  }
  if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
    // Large payload: UCX moves it straight into the region (zero-copy where
    // the wire allows); the reply goes out when it has landed.
    auto* op = new ServerOp{&core, request.region_id, true, param->reply_ep, reply};
    core.ServedOpStarted(request.region_id);
    ucp_request_param_t recv_param{};
    recv_param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    recv_param.cb.recv_am = &OnServerWriteData;
    recv_param.user_data = op;
    ucs_status_ptr_t recv = ucp_am_recv_data_nbx(core.worker(), data, target, length, &recv_param);
    if (recv == nullptr) {
      FinishServerWrite(op, UCS_OK);
    } else if (UCS_PTR_IS_ERR(recv)) {
      FinishServerWrite(op, UCS_PTR_STATUS(recv));
    }
    return UCS_INPROGRESS;
  }
  std::memcpy(target, data, length);
  SendReplyLocked(core, param->reply_ep, kAmWriteReply, reply, nullptr, 0);
  return UCS_OK;
}

// ------------------------------------------------------------ client side

void OnClientReadData(void* request, ucs_status_t status, size_t /*length*/, void* user_data) {
  auto* sink = static_cast<OpSink*>(user_data);
  sink->OnOpComplete(FromUcs(status, "UCX receive of read data"));
  ucp_request_free(request);
}

ucs_status_t OnReadReply(void* arg, const void* header, size_t header_length, void* data,
                         size_t length, const ucp_am_recv_param_t* param) {
  UcxCore& core = *static_cast<UcxCore*>(arg);
  core.mu().AssertHeld();
  if (header_length != sizeof(AmReply)) return UCS_OK;
  AmReply reply;
  std::memcpy(&reply, header, sizeof(reply));
  // Unknown ids (forged, or duplicates) are dropped.
  std::optional<PendingRequest> pending = core.TakePending(reply.request_id);
  if (!pending.has_value()) return UCS_OK;
  absl::Status status = FromPeerCode(reply.code, pending->length);
  if (status.ok() && (reply.length != pending->length || length != pending->length)) {
    status =
        absl::UnavailableError(absl::StrCat("transport protocol error: ", length,
                                            " bytes in the reply to a read of ", pending->length));
  }
  if (!status.ok()) {
    pending->sink->OnOpComplete(status);
    return UCS_OK;
  }
  if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
    ucp_request_param_t recv_param{};
    recv_param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    recv_param.cb.recv_am = &OnClientReadData;
    recv_param.user_data = pending->sink;
    ucs_status_ptr_t recv =
        ucp_am_recv_data_nbx(core.worker(), data, pending->destination, length, &recv_param);
    if (recv == nullptr) {
      pending->sink->OnOpComplete(absl::OkStatus());
    } else if (UCS_PTR_IS_ERR(recv)) {
      pending->sink->OnOpComplete(FromUcs(UCS_PTR_STATUS(recv), "UCX receive of read data"));
    }
    return UCS_INPROGRESS;
  }
  std::memcpy(pending->destination, data, length);
  pending->sink->OnOpComplete(absl::OkStatus());
  return UCS_OK;
}

ucs_status_t OnWriteReply(void* arg, const void* header, size_t header_length, void* /*data*/,
                          size_t /*length*/, const ucp_am_recv_param_t* /*param*/) {
  UcxCore& core = *static_cast<UcxCore*>(arg);
  core.mu().AssertHeld();
  if (header_length != sizeof(AmReply)) return UCS_OK;
  AmReply reply;
  std::memcpy(&reply, header, sizeof(reply));
  std::optional<PendingRequest> pending = core.TakePending(reply.request_id);
  if (!pending.has_value()) return UCS_OK;
  pending->sink->OnOpComplete(FromPeerCode(reply.code, pending->length));
  return UCS_OK;
}

void OnClientSendDone(void* request, ucs_status_t status, void* user_data) {
  auto* op = static_cast<AmOp*>(user_data);
  if (status != UCS_OK) {
    // The request never arrived, so no reply will come: complete that too.
    absl::Status error = FromUcs(status, "UCX send of a transfer request");
    if (op->core->TakePending(op->header.request_id).has_value()) op->sink->OnOpComplete(error);
    op->sink->OnOpComplete(error);
  } else {
    op->sink->OnOpComplete(absl::OkStatus());
  }
  ucp_request_free(request);
}

}  // namespace

absl::Status RegisterMessageHandlers(UcxCore& core) {
  const struct {
    AmId id;
    ucp_am_recv_callback_t cb;
  } handlers[] = {{kAmReadRequest, &OnReadRequest},
                  {kAmReadReply, &OnReadReply},
                  {kAmWriteRequest, &OnWriteRequest},
                  {kAmWriteReply, &OnWriteReply}};
  for (const auto& h : handlers) {
    ucp_am_handler_param_t param{};
    param.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                       UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
    param.id = h.id;
    param.flags = UCP_AM_FLAG_WHOLE_MSG;
    param.cb = h.cb;
    param.arg = &core;
    ucs_status_t st = ucp_worker_set_am_recv_handler(core.worker(), &param);
    if (st != UCS_OK) return FromUcs(st, "ucp_worker_set_am_recv_handler");
  }
  return absl::OkStatus();
}

absl::StatusOr<int> SendRequestLocked(UcxCore& core, UcxEpState& ep, TransferOp transfer_op,
                                      AmOp* op, uint8_t* local, ucp_mem_h memh) {
  const bool read = transfer_op == TransferOp::kRead;
  op->core = &core;
  op->header.request_id =
      core.AddPending(PendingRequest{op->sink, &ep, read ? local : nullptr, op->header.length});
  ucp_request_param_t param{};
  param.op_attr_mask =
      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = UCP_AM_SEND_FLAG_REPLY;  // the server answers on this endpoint
  param.cb.send = &OnClientSendDone;
  param.user_data = op;
  if (!read && memh != nullptr) {
    param.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
    param.memh = memh;
  }
  ucs_status_ptr_t request = ucp_am_send_nbx(
      ep.ep(), read ? kAmReadRequest : kAmWriteRequest, &op->header, sizeof(op->header),
      read ? nullptr : local, read ? 0 : op->header.length, &param);
  if (UCS_PTR_IS_ERR(request)) {
    core.TakePending(op->header.request_id);
    return FromUcs(UCS_PTR_STATUS(request), "ucp_am_send_nbx");
  }
  return request == nullptr ? 1 : 2;
}

}  // namespace krul::ucx_internal
