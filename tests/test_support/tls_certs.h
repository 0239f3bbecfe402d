// Throwaway certificates for TLS tests, made at test time with the openssl
// command line tool in a fresh temporary directory (never committed):
//
//   ca            self-signed CA
//   server        signed by ca, for 127.0.0.1, ::1 and localhost
//   client        signed by ca (a worker's identity for mutual TLS)
//   wrong_name    signed by ca, for "wrong.example" only (hostname check)
//   other_ca      an unrelated self-signed CA
//   rogue_client  signed by other_ca (a client mTLS must refuse)
//
// EC P-256 keys, valid for one day. Each file is `<dir>/<name>.pem` with its
// key in `<dir>/<name>.key`.
#ifndef KRUL_TESTS_TEST_SUPPORT_TLS_CERTS_H_
#define KRUL_TESTS_TEST_SUPPORT_TLS_CERTS_H_

#include <string>

#include "absl/status/statusor.h"

namespace krul::testing {

struct TestCerts {
  std::string dir;
  std::string Cert(const std::string& name) const { return dir + "/" + name + ".pem"; }
  std::string Key(const std::string& name) const { return dir + "/" + name + ".key"; }
};

// Makes the set above under a new directory below $TMPDIR (or /tmp).
// INTERNAL (with openssl's output) when a command fails, e.g. openssl is
// missing (scripts/install-deps.sh installs it).
absl::StatusOr<TestCerts> MakeTestCerts();

// Issues one more certificate `name` signed by `issuer` ("ca" or
// "other_ca") with the given subjectAltName (e.g. "IP:127.0.0.1"), replacing
// an existing one of that name.
absl::Status IssueTestCert(const TestCerts& certs, const std::string& name,
                           const std::string& issuer, const std::string& san);

}  // namespace krul::testing

#endif  // KRUL_TESTS_TEST_SUPPORT_TLS_CERTS_H_
