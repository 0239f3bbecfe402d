// Transport security of every gRPC edge (the kvstore server and its clients,
// the worker's gRPC service): TLS and mutual TLS from PEM files, and the rule
// for when plaintext is acceptable.
//
// Certificates are read through gRPC's FileWatcherCertificateProvider: the
// files are re-read every `refresh_interval`, so a rotated certificate (or
// CA bundle) takes effect for new connections without a restart. Files are
// also read once when the credentials are built, so a missing or malformed
// file is an error at start-up, not a failed handshake later.
//
// Plaintext rule (CheckPlaintext): a listener or a connection without TLS is
// accepted on a loopback address (127.0.0.0/8, ::1, "localhost"), with a
// warning, or anywhere with an explicit insecure switch (--insecure), with a
// louder warning; otherwise it is refused. So the demo and the tests run on
// loopback without certificates, and nothing reachable from the network runs
// in the clear by accident.
//
// Pure functions apart from reading the named files; thread-safe.
#ifndef KRUL_RPC_CREDENTIALS_H_
#define KRUL_RPC_CREDENTIALS_H_

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace krul::rpc {

// TLS of a gRPC server. Empty cert_file and key_file: plaintext.
struct ServerTlsOptions {
  // PEM certificate chain and private key of the server; both or neither.
  std::string cert_file;
  std::string key_file;
  // PEM CA bundle. When set, clients must present a certificate signed by it
  // (mutual TLS); otherwise no client certificate is asked for.
  std::string client_ca_file;
  // How often the files are re-read. Default: 60 s; at least 1 s.
  absl::Duration refresh_interval = absl::Seconds(60);

  bool enabled() const { return !cert_file.empty() || !key_file.empty(); }
};

// TLS of a gRPC client channel. enabled == false: plaintext.
struct ClientTlsOptions {
  bool enabled = false;
  // PEM CA bundle that verifies the server; empty: the system's roots.
  std::string ca_file;
  // The client's own PEM certificate chain and key, for servers that require
  // mutual TLS; both or neither.
  std::string cert_file;
  std::string key_file;
  // Name the server certificate must carry, when it differs from the host in
  // the address (e.g. an IP address dialled, a DNS name in the cert).
  // Default: empty (the address's host).
  std::string server_name;
  // How often the files are re-read. Default: 60 s; at least 1 s.
  absl::Duration refresh_interval = absl::Seconds(60);
};

// Server credentials: TLS (mTLS with client_ca_file) when enabled(), else
// insecure. INVALID_ARGUMENT when only one of cert/key is given or the
// refresh interval is below 1 s; NOT_FOUND / FAILED_PRECONDITION when a file
// is missing or holds no PEM block of the expected kind.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerTlsOptions& options);

// Channel credentials: TLS when options.enabled, else insecure. Sets the
// target-name override in `args` when server_name is given. Codes as for
// MakeServerCredentials.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const ClientTlsOptions& options, grpc::ChannelArguments* args);

// True for 127.0.0.0/8, ::1 (with or without brackets) and "localhost".
// "0.0.0.0", "::", "" and every other name are not loopback.
bool IsLoopbackHost(absl::string_view host);

// The host part of "host:port", "[v6]:port" or "ipv4:host:port" / "dns:///"
// style gRPC targets (scheme prefixes are stripped). INVALID_ARGUMENT when
// there is no host.
absl::StatusOr<std::string> HostOfAddress(absl::string_view address);

// The plaintext rule (see the file comment) for `what` (e.g. "gRPC
// listener") on `host`. Returns the warning to log when plaintext is
// accepted; FAILED_PRECONDITION, naming --insecure and the TLS flags to set,
// when it is not.
absl::StatusOr<std::string> CheckPlaintext(absl::string_view what, absl::string_view host,
                                           bool allow_insecure);

}  // namespace krul::rpc

#endif  // KRUL_RPC_CREDENTIALS_H_
