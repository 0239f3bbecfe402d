#include "krul/rpc/credentials.h"

#include <arpa/inet.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace krul::rpc {
namespace {

// Reads `path` and checks that it holds a PEM block whose label contains
// `label` ("CERTIFICATE", "PRIVATE KEY"). `field` names the option.
absl::Status CheckPemFile(absl::string_view field, const std::string& path,
                          absl::string_view label) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    std::string msg = absl::StrCat(field, ": cannot read '", path, "': ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(msg) : absl::FailedPreconditionError(msg);
  }
  std::stringstream buf;
  buf << in.rdbuf();
  const std::string text = buf.str();
  const std::string begin = "-----BEGIN ";
  for (size_t pos = text.find(begin); pos != std::string::npos;
       pos = text.find(begin, pos + begin.size())) {
    const size_t end = text.find("-----", pos + begin.size());
    if (end == std::string::npos) break;
    if (absl::StrContains(text.substr(pos + begin.size(), end - pos - begin.size()), label)) {
      return absl::OkStatus();
    }
  }
  return absl::FailedPreconditionError(absl::StrCat(field, ": '", path, "' holds no PEM ", label));
}

unsigned RefreshSeconds(absl::Duration d) { return static_cast<unsigned>(absl::ToInt64Seconds(d)); }

absl::Status CheckRefresh(absl::Duration d) {
  if (d < absl::Seconds(1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("refresh_interval: ", absl::FormatDuration(d), " is below 1s"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerTlsOptions& options) {
  if (!options.enabled()) {
    if (!options.client_ca_file.empty()) {
      return absl::InvalidArgumentError(
          "tls_client_ca_file: mutual TLS needs tls_cert_file and tls_key_file too");
    }
    return grpc::InsecureServerCredentials();
  }
  if (options.cert_file.empty() || options.key_file.empty()) {
    return absl::InvalidArgumentError("tls_cert_file and tls_key_file: give both or neither");
  }
  if (absl::Status s = CheckRefresh(options.refresh_interval); !s.ok()) return s;
  if (absl::Status s = CheckPemFile("tls_cert_file", options.cert_file, "CERTIFICATE"); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckPemFile("tls_key_file", options.key_file, "PRIVATE KEY"); !s.ok()) {
    return s;
  }
  const bool mutual = !options.client_ca_file.empty();
  if (mutual) {
    if (absl::Status s = CheckPemFile("tls_client_ca_file", options.client_ca_file, "CERTIFICATE");
        !s.ok()) {
      return s;
    }
  }
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      options.key_file, options.cert_file, options.client_ca_file,
      RefreshSeconds(options.refresh_interval));
  grpc::experimental::TlsServerCredentialsOptions tls(provider);
  tls.watch_identity_key_cert_pairs();
  if (mutual) {
    tls.watch_root_certs();
    tls.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    tls.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  return grpc::experimental::TlsServerCredentials(tls);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const ClientTlsOptions& options, grpc::ChannelArguments* args) {
  if (!options.enabled) {
    if (!options.ca_file.empty() || !options.cert_file.empty() || !options.key_file.empty()) {
      return absl::InvalidArgumentError("TLS files given but TLS is not enabled");
    }
    return grpc::InsecureChannelCredentials();
  }
  if (options.cert_file.empty() != options.key_file.empty()) {
    return absl::InvalidArgumentError("tls cert_file and key_file: give both or neither");
  }
  if (absl::Status s = CheckRefresh(options.refresh_interval); !s.ok()) return s;
  if (!options.ca_file.empty()) {
    if (absl::Status s = CheckPemFile("tls ca_file", options.ca_file, "CERTIFICATE"); !s.ok()) {
      return s;
    }
  }
  const bool identity = !options.cert_file.empty();
  if (identity) {
    if (absl::Status s = CheckPemFile("tls cert_file", options.cert_file, "CERTIFICATE"); !s.ok()) {
      return s;
    }
    if (absl::Status s = CheckPemFile("tls key_file", options.key_file, "PRIVATE KEY"); !s.ok()) {
      return s;
    }
  }
  grpc::experimental::TlsChannelCredentialsOptions tls;
  if (identity || !options.ca_file.empty()) {
    auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
        options.key_file, options.cert_file, options.ca_file,
        RefreshSeconds(options.refresh_interval));
    tls.set_certificate_provider(provider);
    if (!options.ca_file.empty()) tls.watch_root_certs();
    if (identity) tls.watch_identity_key_cert_pairs();
  }
  tls.set_verify_server_certs(true);
  if (!options.server_name.empty() && args != nullptr) {
    args->SetSslTargetNameOverride(options.server_name);
  }
  return grpc::experimental::TlsCredentials(tls);
}

bool IsLoopbackHost(absl::string_view host) {
  host = absl::StripPrefix(host, "[");
  host = absl::StripSuffix(host, "]");
  if (absl::EqualsIgnoreCase(host, "localhost")) return true;
  const std::string h(host);
  in_addr v4{};
  if (inet_pton(AF_INET, h.c_str(), &v4) == 1) {
    return (ntohl(v4.s_addr) >> 24) == 127;
  }
  in6_addr v6{};
  if (inet_pton(AF_INET6, h.c_str(), &v6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&v6)) return true;
    // ::ffff:127.x.y.z
    return IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127;
  }
  return false;
}

absl::StatusOr<std::string> HostOfAddress(absl::string_view address) {
  absl::string_view a = address;
  for (absl::string_view scheme : {"ipv4:", "ipv6:", "dns:///", "dns:"}) {
    if (absl::ConsumePrefix(&a, scheme)) break;
  }
  absl::string_view host;
  if (absl::StartsWith(a, "[")) {
    const size_t close = a.find(']');
    if (close == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("address '", address, "': unclosed '['"));
    }
    host = a.substr(1, close - 1);
  } else {
    const size_t colon = a.rfind(':');
    host = colon == absl::string_view::npos ? a : a.substr(0, colon);
  }
  if (host.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("address '", address, "' has no host"));
  }
  return std::string(host);
}

absl::StatusOr<std::string> CheckPlaintext(absl::string_view what, absl::string_view host,
                                           bool allow_insecure) {
  if (IsLoopbackHost(host)) {
    return absl::StrCat(what, " on ", host,
                        " is plaintext without authentication of the peer; acceptable on "
                        "loopback only (set the TLS flags to encrypt it)");
  }
  if (allow_insecure) {
    return absl::StrCat("INSECURE: ", what, " on ", host,
                        " is PLAINTEXT on a non-loopback address because --insecure is set: "
                        "anyone on the network can read and forge its traffic");
  }
  return absl::FailedPreconditionError(absl::StrCat(
      what, " on '", host,
      "' would be plaintext on a non-loopback address: give TLS certificates (--tls_cert_file/"
      "--tls_key_file on servers, the *_tls_ca_file flags on clients), bind 127.0.0.1, or pass "
      "--insecure to accept plaintext explicitly"));
}

}  // namespace krul::rpc
