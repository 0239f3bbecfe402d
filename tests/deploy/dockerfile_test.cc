// deploy/docker: no container engine runs here, so the Dockerfiles are checked for what can
// be checked without one: every package their build stages install is one of
// scripts/install-deps.sh (the same names the project builds with), each image is multi-stage,
// runs as a non-root user, has a HEALTHCHECK and exposes the ports the Helm chart uses, and
// the script that picks the runtime packages works on the binaries built here. The worker
// image's default command is secure: it serves on all interfaces only with the API keys the
// Helm chart mounts, and those flags start the binary built here (keys required: 401 without).
#include <httplib.h>

#include <algorithm>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "deploy_test_util.h"
#include "gtest/gtest.h"
#include "test_support/child_process.h"

namespace krul::deploy_test {
namespace {

std::string DockerDir() { return SourceDir() + "/deploy/docker"; }

// The names in the KRUL_DEB_PACKAGES=( ... ) array of scripts/install-deps.sh.
std::set<std::string> ProjectPackages() {
  const std::string script = ReadFile(SourceDir() + "/scripts/install-deps.sh");
  std::set<std::string> names;
  const size_t start = script.find("KRUL_DEB_PACKAGES=(");
  if (start == std::string::npos) return names;
  const size_t end = script.find("\n)", start);
  for (absl::string_view line : absl::StrSplit(script.substr(start, end - start), '\n')) {
    line = line.substr(0, line.find('#'));
    for (absl::string_view word : absl::StrSplit(line, ' ', absl::SkipWhitespace())) {
      if (!absl::StrContains(word, "=(")) names.emplace(word);
    }
  }
  return names;
}

// Packages named by `apt-get install` commands, per stage (FROM line -> names).
std::vector<std::pair<std::string, std::vector<std::string>>> InstalledPackages(
    const std::string& file) {
  std::vector<std::pair<std::string, std::vector<std::string>>> stages;
  // Join continuation lines first.
  std::string text = ReadFile(file);
  text = std::regex_replace(text, std::regex("\\\\\n"), " ");
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, "FROM ")) stages.push_back({std::string(line), {}});
    if (absl::StartsWith(line, "#") || stages.empty()) continue;
    for (absl::string_view cmd : absl::StrSplit(line, "&&")) {
      size_t at = cmd.find("apt-get install");
      if (at == absl::string_view::npos || absl::StrContains(cmd, "xargs")) continue;
      for (absl::string_view w : absl::StrSplit(cmd.substr(at + 15), ' ', absl::SkipWhitespace())) {
        if (absl::StartsWith(w, "-")) continue;
        stages.back().second.emplace_back(w);
      }
    }
  }
  return stages;
}

int ValueOf(const std::string& values, const std::string& key_regex) {
  std::smatch m;
  if (!std::regex_search(values, m, std::regex(key_regex + R"(:\s*(\d+))"))) return -1;
  return std::stoi(m[1]);
}

TEST(DockerfileTest, BuildStagesInstallTheProjectsOwnPackages) {
  std::set<std::string> project = ProjectPackages();
  ASSERT_GT(project.size(), 10u) << "KRUL_DEB_PACKAGES not found in scripts/install-deps.sh";
  for (const char* name : {"kvstore.Dockerfile", "worker.Dockerfile"}) {
    SCOPED_TRACE(name);
    int checked = 0;
    for (const auto& [from, packages] : InstalledPackages(DockerDir() + "/" + name)) {
      for (const std::string& p : packages) {
        // NVIDIA's CUDA packages (their own repository) and the CA bundle to reach it over
        // HTTPS are the only names that are not the project's Debian packages.
        if (absl::StartsWith(p, "cuda-") || absl::StartsWith(p, "libcublas") ||
            absl::StartsWith(p, "libnccl") || absl::StartsWith(p, "${") || p == "ca-certificates") {
          continue;
        }
        EXPECT_TRUE(project.count(p))
            << from << ": installs '" << p << "', which scripts/install-deps.sh does not";
        ++checked;
      }
    }
    EXPECT_GE(checked, 15) << "found too few packages; did the install lines change shape?";
  }
}

TEST(DockerfileTest, ImagesAreMultiStageNonRootWithHealthchecksAndTheChartsPorts) {
  const std::string values = ReadFile(SourceDir() + "/helm/krul/values.yaml");
  const int http = ValueOf(values, "httpPort"), grpc = ValueOf(values, "grpcPort"),
            metrics = ValueOf(values, "metricsPort");
  ASSERT_GT(http, 0);
  struct Want {
    std::string file;
    std::vector<int> ports;
  };
  for (const Want& w :
       {Want{"kvstore.Dockerfile", {grpc, metrics}}, Want{"worker.Dockerfile", {http}}}) {
    SCOPED_TRACE(w.file);
    const std::string text = ReadFile(DockerDir() + "/" + w.file);
    ASSERT_FALSE(text.empty());
    int froms = 0;
    std::string user, expose;
    bool healthcheck = false;
    for (absl::string_view line : absl::StrSplit(text, '\n')) {
      if (absl::StartsWith(line, "FROM ")) ++froms;
      if (absl::ConsumePrefix(&line, "USER ")) user = std::string(line);
      if (absl::ConsumePrefix(&line, "EXPOSE ")) expose = std::string(line);
      if (absl::StartsWith(line, "HEALTHCHECK ")) healthcheck = true;
    }
    EXPECT_GE(froms, 2) << "not a multi-stage build";
    EXPECT_TRUE(healthcheck);
    EXPECT_FALSE(user.empty() || absl::StartsWith(user, "0") || absl::StartsWith(user, "root"))
        << "USER " << user;
    for (int port : w.ports) {
      EXPECT_TRUE(absl::StrContains(absl::StrCat(" ", expose, " "), absl::StrCat(" ", port, " ")))
          << "EXPOSE " << expose << " lacks the chart's port " << port;
      EXPECT_TRUE(absl::StrContains(text, absl::StrCat("=", port))) << "no flag sets port " << port;
    }
  }
}

TEST(DockerfileTest, RuntimePackagesAreFoundForTheBuiltBinaries) {
  if (FindTool("dpkg").empty()) GTEST_SKIP() << "not a Debian system (no dpkg)";
  CommandResult r = RunCommand({DockerDir() + "/runtime-packages.sh", BinDir() + "/krul-kvstore",
                                BinDir() + "/krul-worker"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::set<std::string> packages;
  for (absl::string_view line : absl::StrSplit(r.output, '\n', absl::SkipEmpty()))
    packages.emplace(line);
  EXPECT_TRUE(packages.count("libc6")) << r.output;
  EXPECT_TRUE(std::any_of(packages.begin(), packages.end(), [](const std::string& p) {
    return absl::StartsWith(p, "libgrpc++");
  })) << r.output;
  for (const std::string& p : packages) EXPECT_FALSE(absl::EndsWith(p, "-dev")) << p;
}

// The arguments of an image's default CMD ["...", ...].
std::vector<std::string> ImageCmd(const std::string& dockerfile) {
  std::vector<std::string> args;
  for (absl::string_view line : absl::StrSplit(ReadFile(DockerDir() + "/" + dockerfile), '\n')) {
    if (!absl::ConsumePrefix(&line, "CMD [")) continue;
    args.clear();
    std::smatch m;
    std::string rest(line);
    while (std::regex_search(rest, m, std::regex("\"([^\"]*)\""))) {
      args.push_back(m[1]);
      rest = m.suffix();
    }
  }
  return args;
}

TEST(DockerfileTest, WorkerImageServesOffLoopbackOnlyWithTheChartsApiKeys) {
  const std::vector<std::string> cmd = ImageCmd("worker.Dockerfile");
  ASSERT_FALSE(cmd.empty()) << "no CMD in worker.Dockerfile";
  // The chart mounts the keys Secret here; the image must read the same file.
  const std::string chart_flag = absl::StrCat(absl::StripAsciiWhitespace(
      LineWith(ReadFile(SourceDir() + "/helm/krul/templates/_helpers.tpl"), "--api_keys_file=")));
  ASSERT_FALSE(chart_flag.empty()) << "the chart passes no --api_keys_file";
  EXPECT_TRUE(std::count(cmd.begin(), cmd.end(), chart_flag)) << "CMD lacks " << chart_flag;
  EXPECT_TRUE(std::count(cmd.begin(), cmd.end(), "--host=0.0.0.0"));
  for (const std::string& arg : cmd) {
    EXPECT_FALSE(absl::StartsWith(arg, "--insecure")) << "the default CMD passes " << arg;
  }
  const std::set<std::string> known = BinaryFlags(BinDir() + "/krul-worker");
  ASSERT_GT(known.size(), 10u) << "krul-worker --helpfull listed no flags";
  for (const std::string& arg : cmd) {
    absl::string_view name(arg);
    ASSERT_TRUE(absl::ConsumePrefix(&name, "--")) << arg;
    EXPECT_TRUE(known.count(std::string(name.substr(0, name.find('=')))))
        << "CMD passes " << arg << ", which krul-worker does not have";
  }
}

// The kvstore image listens off loopback too, so its default CMD turns on
// mutual TLS and tenant tokens, reading the files where the chart mounts
// them, with flags krul-kvstore has.
TEST(DockerfileTest, KvstoreImageServesOffLoopbackOnlyWithTheChartsTlsAndTokens) {
  const std::vector<std::string> cmd = ImageCmd("kvstore.Dockerfile");
  ASSERT_FALSE(cmd.empty()) << "no CMD in kvstore.Dockerfile";
  EXPECT_TRUE(std::count(cmd.begin(), cmd.end(), "--host=0.0.0.0"));
  const std::string helpers = ReadFile(SourceDir() + "/helm/krul/templates/_helpers.tpl");
  for (const char* flag :
       {"--tls_cert_file=", "--tls_key_file=", "--tls_client_ca_file=", "--tenant_tokens_file="}) {
    const std::string chart_flag = std::string(absl::StripAsciiWhitespace(LineWith(helpers, flag)));
    ASSERT_FALSE(chart_flag.empty()) << "the chart passes no " << flag;
    EXPECT_TRUE(std::count(cmd.begin(), cmd.end(), chart_flag)) << "CMD lacks " << chart_flag;
  }
  const std::set<std::string> known = BinaryFlags(BinDir() + "/krul-kvstore");
  ASSERT_GT(known.size(), 10u) << "krul-kvstore --helpfull listed no flags";
  for (const std::string& arg : cmd) {
    EXPECT_FALSE(absl::StartsWith(arg, "--insecure")) << "the default CMD passes " << arg;
    absl::string_view name(arg);
    ASSERT_TRUE(absl::ConsumePrefix(&name, "--")) << arg;
    EXPECT_TRUE(known.count(std::string(name.substr(0, name.find('=')))))
        << "CMD passes " << arg << ", which krul-kvstore does not have";
  }
}

// The default CMD's flags start the worker once a keys file is at the path (here a scratch
// copy, made by krul-kvstore hash-token; loopback and an ephemeral port replace the
// container's address), and without the file it does not start keyless.
TEST(DockerfileTest, WorkerImageDefaultCommandStartsWithMountedKeysOnly) {
  const std::vector<std::string> cmd = ImageCmd("worker.Dockerfile");
  ASSERT_FALSE(cmd.empty());
  ScopedTempDir tmp("krul-docker-cmd");
  ASSERT_FALSE(tmp.path().empty());
  const std::string key = "sk-docker-cmd-test-5b0e91";
  ASSERT_TRUE(WriteFile(tmp.path() + "/alice.key", key + "\n"));
  CommandResult hashed = RunCommand({"/bin/sh", "-c", "\"$0\" hash-token alice < \"$1\"",
                                     BinDir() + "/krul-kvstore", tmp.path() + "/alice.key"});
  ASSERT_EQ(hashed.exit_code, 0) << hashed.output;
  ASSERT_TRUE(WriteFile(tmp.path() + "/api-keys", hashed.output));
  auto args_with = [&](const std::string& keys_file) {
    std::vector<std::string> argv = {BinDir() + "/krul-worker"};
    for (const std::string& a : cmd) {
      if (absl::StartsWith(a, "--api_keys_file=")) {
        argv.push_back("--api_keys_file=" + keys_file);
      } else if (!absl::StartsWith(a, "--host=") && !absl::StartsWith(a, "--http_port=")) {
        argv.push_back(a);
      }
    }
    argv.insert(argv.end(), {"--host=127.0.0.1", "--http_port=0", "--threads=1"});
    return argv;
  };

  CommandResult missing = RunCommand(args_with(tmp.path() + "/absent"), "", absl::Seconds(60));
  EXPECT_NE(missing.exit_code, 0) << missing.output;
  EXPECT_TRUE(absl::StrContains(missing.output, "absent")) << missing.output;

  auto worker = testing::ChildProcess::Start(args_with(tmp.path() + "/api-keys"), "listening on",
                                             absl::Seconds(60));
  ASSERT_TRUE(worker.ok()) << worker.status();
  const std::string ready = (*worker)->ready_line();
  const int port = std::stoi(ready.substr(ready.rfind(':') + 1));
  httplib::Client client("127.0.0.1", port);
  auto without = client.Get("/v1/models");
  ASSERT_TRUE(without) << httplib::to_string(without.error());
  EXPECT_EQ(without->status, 401);
  auto with = client.Get("/v1/models", {{"Authorization", "Bearer " + key}});
  ASSERT_TRUE(with) << httplib::to_string(with.error());
  EXPECT_EQ(with->status, 200) << with->body;
  EXPECT_EQ((*worker)->Terminate(), 0);
}

}  // namespace
}  // namespace krul::deploy_test
