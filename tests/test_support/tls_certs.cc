#include "test_support/tls_certs.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "test_support/shell.h"

namespace krul::testing {
namespace {

// Runs a shell command; INTERNAL with its output when it fails.
absl::Status Run(const std::string& command) {
  const ShellResult r = RunShell(command);
  if (r.exit_code != 0) {
    return absl::InternalError(
        absl::StrCat("'", command, "' failed (", r.exit_code, "): ", r.output));
  }
  return absl::OkStatus();
}

std::string Quote(const std::string& s) { return absl::StrCat("'", s, "'"); }

absl::Status SelfSigned(const TestCerts& c, const std::string& name, const std::string& cn) {
  return Run(absl::StrCat(
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj ",
      Quote("/CN=" + cn), " -keyout ", Quote(c.Key(name)), " -out ", Quote(c.Cert(name))));
}

}  // namespace

absl::Status IssueTestCert(const TestCerts& c, const std::string& name, const std::string& issuer,
                           const std::string& san) {
  const std::string ext = c.dir + "/" + name + ".ext";
  {
    std::ofstream out(ext);
    out << "subjectAltName=" << san << "\n"
        << "basicConstraints=CA:FALSE\n"
        << "keyUsage=digitalSignature,keyEncipherment\n"
        << "extendedKeyUsage=serverAuth,clientAuth\n";
    if (!out) return absl::InternalError("cannot write " + ext);
  }
  const std::string csr = c.dir + "/" + name + ".csr";
  if (absl::Status s = Run(absl::StrCat(
          "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj ",
          Quote("/CN=krul-test-" + name), " -keyout ", Quote(c.Key(name)), " -out ", Quote(csr)));
      !s.ok()) {
    return s;
  }
  return Run(absl::StrCat("openssl x509 -req -days 1 -in ", Quote(csr), " -CA ",
                          Quote(c.Cert(issuer)), " -CAkey ", Quote(c.Key(issuer)),
                          " -CAcreateserial -extfile ", Quote(ext), " -out ", Quote(c.Cert(name))));
}

absl::StatusOr<TestCerts> MakeTestCerts() {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern =
      absl::StrCat(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", "/krul-test-certs-XXXXXX");
  if (mkdtemp(pattern.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp ", pattern, " failed"));
  }
  TestCerts c{pattern};
  if (absl::Status s = SelfSigned(c, "ca", "krul-test-ca"); !s.ok()) return s;
  if (absl::Status s = SelfSigned(c, "other_ca", "krul-other-ca"); !s.ok()) return s;
  if (absl::Status s = IssueTestCert(c, "server", "ca", "IP:127.0.0.1,IP:::1,DNS:localhost");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = IssueTestCert(c, "client", "ca", "DNS:krul-worker"); !s.ok()) return s;
  if (absl::Status s = IssueTestCert(c, "wrong_name", "ca", "DNS:wrong.example"); !s.ok()) {
    return s;
  }
  if (absl::Status s = IssueTestCert(c, "rogue_client", "other_ca", "DNS:krul-worker"); !s.ok()) {
    return s;
  }
  return c;
}

}  // namespace krul::testing
