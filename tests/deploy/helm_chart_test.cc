// The Helm chart (helm/krul): lint, render with the default and a production-like values
// file and validate every manifest against the Kubernetes schemas (../shared/tools/
// validate-k8s.sh), check that what the production values ask for is rendered, that bad
// values files are refused with a message naming the problem, and that every flag the chart
// passes to the binaries is one they have. Skips with a message when helm is missing.
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "deploy_test_util.h"
#include "gtest/gtest.h"
#include "test_support/child_process.h"

namespace krul::deploy_test {
namespace {

std::string Chart() { return SourceDir() + "/helm/krul"; }
std::string ProductionValues() { return Chart() + "/examples/values-production.yaml"; }

class HelmChartTest : public ::testing::Test {
 protected:
  void SetUp() override {
    helm_ = FindTool("helm", "HELM");
    if (helm_.empty()) {
      GTEST_SKIP() << "helm not found: scripts/install-deps.sh installs it with "
                      "../shared/tools/install-helm.sh when ../shared is there";
    }
  }

  // `helm template` of the chart as release "krul" in namespace "krul" with extra args.
  CommandResult Template(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {helm_, "template", "krul", Chart(), "--namespace", "krul"};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv);
  }

  std::string helm_;
};

// The rendered documents, split at the YAML document separators, keyed "Kind/name".
std::map<std::string, std::string> Documents(const std::string& rendered) {
  std::map<std::string, std::string> docs;
  for (absl::string_view doc : absl::StrSplit(rendered, "\n---")) {
    std::string kind, name;
    bool in_metadata = false;
    for (absl::string_view line : absl::StrSplit(doc, '\n')) {
      if (absl::ConsumePrefix(&line, "kind: ")) kind = std::string(line);
      if (line == "metadata:") in_metadata = true;
      if (in_metadata && absl::ConsumePrefix(&line, "  name: ") && name.empty())
        name = std::string(line);
    }
    if (!kind.empty()) docs[kind + "/" + name] = std::string(doc);
  }
  return docs;
}

// The flags of a rendered flag file (ConfigMap key `key`), as "--name=value" lines.
std::vector<std::string> FlagLines(const std::string& configmap, const std::string& key) {
  std::vector<std::string> flags;
  bool in_key = false;
  for (absl::string_view line : absl::StrSplit(configmap, '\n')) {
    if (absl::StartsWith(line, "  ") && !absl::StartsWith(line, "    ")) {
      in_key = absl::StartsWith(line, absl::StrCat("  ", key, ":"));
      continue;
    }
    absl::string_view l = absl::StripAsciiWhitespace(line);
    if (in_key && absl::StartsWith(l, "--")) flags.emplace_back(l);
  }
  return flags;
}

std::string FlagName(absl::string_view flag) {
  absl::ConsumePrefix(&flag, "--");
  return std::string(flag.substr(0, flag.find('=')));
}

TEST_F(HelmChartTest, LintStrictPassesWithDefaultAndProductionValues) {
  for (const std::vector<std::string>& extra :
       {std::vector<std::string>{}, std::vector<std::string>{"-f", ProductionValues()}}) {
    std::vector<std::string> argv = {helm_, "lint", "--strict", Chart()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    CommandResult r = RunCommand(argv);
    EXPECT_EQ(r.exit_code, 0) << absl::StrJoin(argv, " ") << "\n" << r.output;
    EXPECT_TRUE(absl::StrContains(r.output, "0 chart(s) failed")) << r.output;
  }
}

// validate-k8s.sh: helm lint --strict, helm template, then every manifest against the
// Kubernetes (and prometheus-operator) schemas, PromQL through promtool.
void ExpectValid(const std::vector<std::string>& template_args) {
  const std::string tools = SharedToolsDir();
  if (tools.empty()) GTEST_SKIP() << "../shared/tools is absent: validate-k8s.sh not run";
  std::vector<std::string> argv = {"bash", tools + "/validate-k8s.sh", Chart()};
  argv.insert(argv.end(), template_args.begin(), template_args.end());
  // The first run installs the schema packages from npm into a cache folder.
  CommandResult r = RunCommand(argv, "", absl::Minutes(5));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, " 0 with errors")) << r.output;
  EXPECT_FALSE(absl::StrContains(r.output, ": error:")) << r.output;
}

TEST_F(HelmChartTest, DefaultValuesRenderValidManifests) { ExpectValid({}); }

TEST_F(HelmChartTest, ProductionValuesRenderValidManifests) {
  ExpectValid({"-f", ProductionValues(), "--namespace", "krul"});
}

TEST_F(HelmChartTest, ProductionValuesRenderWhatTheyAskFor) {
  CommandResult r = Template({"-f", ProductionValues()});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::map<std::string, std::string> docs = Documents(r.output);
  for (const char* want :
       {"StatefulSet/krul-kvstore", "Service/krul-kvstore", "Deployment/krul-worker",
        "Service/krul-worker", "ConfigMap/krul-config", "PodDisruptionBudget/krul-worker",
        "PodDisruptionBudget/krul-kvstore", "NetworkPolicy/krul-kvstore",
        "NetworkPolicy/krul-worker", "ServiceMonitor/krul-worker", "ServiceMonitor/krul-kvstore",
        "PrometheusRule/krul", "ConfigMap/krul-dashboard-worker",
        "ConfigMap/krul-dashboard-kvstore"}) {
    EXPECT_TRUE(docs.count(want)) << "no " << want << " rendered";
  }
  const std::string& sts = docs["StatefulSet/krul-kvstore"];
  const std::string& deploy = docs["Deployment/krul-worker"];
  // values-production.yaml: 3 shards on 500Gi volumes, 4 workers with one GPU each.
  EXPECT_TRUE(absl::StrContains(sts, "\n  replicas: 3\n")) << sts;
  EXPECT_TRUE(absl::StrContains(sts, "volumeClaimTemplates:")) << sts;
  EXPECT_TRUE(absl::StrContains(sts, "storage: 500Gi")) << sts;
  EXPECT_TRUE(absl::StrContains(sts, "storageClassName: fast-ssd")) << sts;
  EXPECT_TRUE(absl::StrContains(docs["Service/krul-kvstore"], "clusterIP: None"));
  EXPECT_TRUE(absl::StrContains(deploy, "\n  replicas: 4\n")) << deploy;
  EXPECT_TRUE(absl::StrContains(deploy, "nvidia.com/gpu: 1")) << deploy;
  EXPECT_TRUE(absl::StrContains(deploy, "path: /readyz")) << deploy;
  EXPECT_TRUE(absl::StrContains(deploy, "path: /healthz")) << deploy;
  EXPECT_TRUE(absl::StrContains(deploy, "preStop:")) << deploy;
  EXPECT_TRUE(absl::StrContains(deploy, "claimName: krul-models")) << deploy;
  // Both containers: non-root, read-only root filesystem, no privilege escalation.
  for (const std::string* doc : {&sts, &deploy}) {
    EXPECT_TRUE(absl::StrContains(*doc, "runAsNonRoot: true"));
    EXPECT_TRUE(absl::StrContains(*doc, "readOnlyRootFilesystem: true"));
    EXPECT_TRUE(absl::StrContains(*doc, "allowPrivilegeEscalation: false"));
  }
  // TLS and tokens come from the named Secrets, mounted and passed as flags.
  EXPECT_TRUE(absl::StrContains(sts, "secretName: krul-kvstore-tls"));
  EXPECT_TRUE(absl::StrContains(deploy, "secretName: krul-worker-tls"));
  EXPECT_TRUE(absl::StrContains(deploy, "secretName: krul-api-keys"));
  EXPECT_TRUE(absl::StrContains(deploy, "secretName: krul-kv-mac-key"));
  // The KV MAC key is the workers' alone: the kvstore must never see it.
  EXPECT_FALSE(absl::StrContains(sts, "kv-mac")) << sts;
  const std::string& config = docs["ConfigMap/krul-config"];
  std::vector<std::string> kv_flags = FlagLines(config, "kvstore.flags");
  std::vector<std::string> w_flags = FlagLines(config, "worker.flags");
  std::set<std::string> kv_names, w_names;
  for (const auto& f : kv_flags) kv_names.insert(FlagName(f));
  for (const auto& f : w_flags) w_names.insert(FlagName(f));
  for (const char* f :
       {"tls_cert_file", "tls_key_file", "tls_client_ca_file", "tenant_tokens_file"}) {
    EXPECT_TRUE(kv_names.count(f)) << "kvstore.flags lacks --" << f;
  }
  for (const char* f : {"kvstore_tls_ca_file", "kvstore_tls_cert_file", "kvstore_tls_key_file",
                        "kvstore_token_file", "api_keys_file"}) {
    EXPECT_TRUE(w_names.count(f)) << "worker.flags lacks --" << f;
  }
  EXPECT_FALSE(kv_names.count("kv_mac_key_file"));
  // Services bind loopback by default: the chart must say where to listen.
  EXPECT_TRUE(std::count(kv_flags.begin(), kv_flags.end(), "--host=0.0.0.0"));
  EXPECT_TRUE(std::count(w_flags.begin(), w_flags.end(), "--host=0.0.0.0"));
  // Secrets are only referenced, never generated.
  for (const auto& [id, doc] : docs) EXPECT_FALSE(absl::StartsWith(id, "Secret/")) << id;
  // The dashboards carry the Grafana sidecar label and go to the namespace asked for.
  EXPECT_TRUE(
      absl::StrContains(docs["ConfigMap/krul-dashboard-worker"], "grafana_dashboard: \"1\""));
  EXPECT_TRUE(absl::StrContains(docs["ConfigMap/krul-dashboard-worker"], "namespace: monitoring"));
  // The PrometheusRule's config rules carry the production thresholds: 48G DRAM, 500Gi disk.
  const std::string& rule = docs["PrometheusRule/krul"];
  EXPECT_TRUE(absl::StrContains(rule, absl::StrCat("vector(", 48LL << 30, ")"))) << rule;
  EXPECT_TRUE(absl::StrContains(rule, absl::StrCat("vector(", 500LL << 30, ")"))) << rule;
  EXPECT_TRUE(absl::StrContains(rule, "alert: KrulKvstoreShardDown")) << rule;
}

// Adding a shard is a change of kvstore.replicas: the workers' shard list follows it.
TEST_F(HelmChartTest, WorkersDiscoverEveryShardThroughTheHeadlessService) {
  for (int shards : {1, 5}) {
    CommandResult r = Template({"--set", absl::StrCat("kvstore.replicas=", shards)});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    std::map<std::string, std::string> docs = Documents(r.output);
    EXPECT_TRUE(absl::StrContains(docs["StatefulSet/krul-kvstore"],
                                  absl::StrCat("\n  replicas: ", shards, "\n")));
    std::string list;
    for (const std::string& f : FlagLines(docs["ConfigMap/krul-config"], "worker.flags")) {
      if (absl::StartsWith(f, "--kvstore=")) list = f.substr(strlen("--kvstore="));
    }
    std::vector<std::string> addrs = absl::StrSplit(list, ',');
    ASSERT_EQ(addrs.size(), static_cast<size_t>(shards)) << list;
    for (int i = 0; i < shards; ++i) {
      EXPECT_EQ(addrs[i],
                absl::StrCat("krul-kvstore-", i, ".krul-kvstore.krul.svc.cluster.local:7070"));
    }
  }
}

// The lines of the list item "- name: NAME" (at any indentation) after the `nth` such item in
// `doc`, up to the next line indented no deeper than its dash; empty when there is none.
std::vector<std::string> ListItem(const std::string& doc, const std::string& name, int nth) {
  std::vector<std::string> lines = absl::StrSplit(doc, '\n');
  int seen = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    absl::string_view l = absl::StripLeadingAsciiWhitespace(lines[i]);
    if (l != absl::StrCat("- name: ", name) || seen++ != nth) continue;
    const size_t indent = lines[i].size() - l.size();
    std::vector<std::string> item;
    for (size_t j = i + 1; j < lines.size(); ++j) {
      absl::string_view m = absl::StripLeadingAsciiWhitespace(lines[j]);
      if (lines[j].size() - m.size() <= indent) break;
      item.emplace_back(m);
    }
    return item;
  }
  return {};
}

bool Has(const std::vector<std::string>& lines, const std::string& line) {
  return std::count(lines.begin(), lines.end(), line) > 0;
}

// auth.kvMac: the Secret's key file is mounted read-only (0400) into every worker pod, the
// rendered --kv_mac_key_file names the mounted file, and a key made as docs/deploy.md says
// (`openssl rand -hex 32`) is one krul-worker accepts there, while a malformed one stops it.
TEST_F(HelmChartTest, KvMacKeySecretIsMountedIntoTheWorkersAndNamedByTheirFlag) {
  // Off (the default): neither the flag nor the volume.
  CommandResult off = Template({});
  ASSERT_EQ(off.exit_code, 0) << off.output;
  std::map<std::string, std::string> off_docs = Documents(off.output);
  for (const std::string& f : FlagLines(off_docs["ConfigMap/krul-config"], "worker.flags")) {
    EXPECT_NE(FlagName(f), "kv_mac_key_file") << f;
  }
  EXPECT_FALSE(absl::StrContains(off_docs["Deployment/krul-worker"], "kv-mac"));

  CommandResult r =
      Template({"--set", "auth.kvMac.enabled=true", "--set", "auth.kvMac.secretName=my-kv-mac"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::map<std::string, std::string> docs = Documents(r.output);
  const std::string& deploy = docs["Deployment/krul-worker"];
  std::vector<std::string> mount = ListItem(deploy, "kv-mac", 0);
  std::vector<std::string> volume = ListItem(deploy, "kv-mac", 1);
  ASSERT_FALSE(mount.empty()) << deploy;
  ASSERT_FALSE(volume.empty()) << deploy;
  EXPECT_TRUE(Has(mount, "readOnly: true")) << absl::StrJoin(mount, "\n");
  std::string mount_path;
  for (absl::string_view l : mount) {
    if (absl::ConsumePrefix(&l, "mountPath: ")) mount_path = std::string(l);
  }
  ASSERT_FALSE(mount_path.empty()) << absl::StrJoin(mount, "\n");
  for (const char* want : {"secret:", "secretName: my-kv-mac", "defaultMode: 0400",
                           "- key: kv-mac-key", "path: kv-mac-key"}) {
    EXPECT_TRUE(Has(volume, want)) << want << " not in\n" << absl::StrJoin(volume, "\n");
  }
  std::string flag;
  for (const std::string& f : FlagLines(docs["ConfigMap/krul-config"], "worker.flags")) {
    if (FlagName(f) == "kv_mac_key_file") flag = f;
  }
  EXPECT_EQ(flag, "--kv_mac_key_file=" + mount_path + "/kv-mac-key");
  for (const std::string& f : FlagLines(docs["ConfigMap/krul-config"], "kvstore.flags")) {
    EXPECT_FALSE(absl::StrContains(f, "kv_mac")) << f;
  }
  EXPECT_FALSE(absl::StrContains(docs["StatefulSet/krul-kvstore"], "kv-mac"));

  // The worker reads the file the flag names: a key made as the docs say starts it.
  CommandResult key = RunCommand({"openssl", "rand", "-hex", "32"});
  if (key.exit_code != 0) GTEST_SKIP() << "no openssl (scripts/install-deps.sh installs it)";
  ScopedTempDir tmp("krul-chart-kv-mac");
  ASSERT_FALSE(tmp.path().empty());
  const std::string good = tmp.path() + "/kv-mac-key";
  const std::string bad = tmp.path() + "/bad-kv-mac-key";
  ASSERT_TRUE(WriteFile(good, key.output));
  ASSERT_EQ(chmod(good.c_str(), 0400), 0);
  ASSERT_TRUE(WriteFile(bad, "not-a-key\n"));
  auto kv =
      testing::ChildProcess::Start({BinDir() + "/krul-kvstore", "--host=127.0.0.1", "--port=0",
                                    "--metrics_port=0", "--tiers=dram", "--dram_capacity=64M"},
                                   "listening on");
  ASSERT_TRUE(kv.ok()) << kv.status();
  std::vector<std::string> parts = absl::StrSplit((*kv)->ready_line(), ' ');
  auto at = std::find(parts.begin(), parts.end(), "on");
  ASSERT_TRUE(at != parts.end() && at + 1 != parts.end()) << (*kv)->ready_line();
  auto worker_argv = [&](const std::string& key_file) {
    return std::vector<std::string>{BinDir() + "/krul-worker",
                                    "--synthetic",
                                    "--host=127.0.0.1",
                                    "--http_port=0",
                                    "--threads=1",
                                    "--kvstore=" + *(at + 1),
                                    "--kv_mac_key_file=" + key_file};
  };
  auto worker = testing::ChildProcess::Start(worker_argv(good), "listening on", absl::Seconds(60));
  ASSERT_TRUE(worker.ok()) << worker.status();
  EXPECT_EQ((*worker)->Terminate(), 0);
  CommandResult refused = RunCommand(worker_argv(bad), "", absl::Seconds(60));
  EXPECT_FALSE(refused.timed_out) << "krul-worker started with a malformed key file";
  EXPECT_NE(refused.exit_code, 0) << refused.output;
  EXPECT_TRUE(absl::StrContains(refused.output, bad)) << refused.output;
  EXPECT_EQ((*kv)->Terminate(), 0);
}

TEST_F(HelmChartTest, BadValuesFilesAreRejectedWithAClearMessage) {
  std::vector<std::string> files = ListFiles(SourceDir() + "/tests/deploy/bad-values", ".yaml");
  ASSERT_GE(files.size(), 10u);
  for (const std::string& file : files) {
    SCOPED_TRACE(file);
    // Each file names the message it must get on its first line: "# expect: TEXT".
    std::string first_line = ReadFile(file).substr(0, ReadFile(file).find('\n'));
    absl::string_view expect = first_line;
    ASSERT_TRUE(absl::ConsumePrefix(&expect, "# expect: ")) << "first line: " << first_line;
    CommandResult r = Template({"-f", file});
    EXPECT_NE(r.exit_code, 0) << "accepted:\n" << r.output.substr(0, 2000);
    EXPECT_TRUE(absl::StrContains(r.output, expect)) << "wanted \"" << expect << "\" in:\n"
                                                     << r.output;
  }
}

// Flags the chart passes that binaries built before issue 17 (TLS, tenant tokens, API keys)
// and the --device switch do not have yet; docs/deploy.md says which releases have them.
const std::set<std::string>& PendingFlags() {
  static const auto* flags =
      new std::set<std::string>{"tls_cert_file",        "tls_key_file",
                                "tls_client_ca_file",   "tenant_tokens_file",
                                "kvstore_tls_ca_file",  "kvstore_tls_cert_file",
                                "kvstore_tls_key_file", "kvstore_token_file",
                                "api_keys_file",        "device"};
  return *flags;
}

TEST_F(HelmChartTest, EveryRenderedFlagIsAFlagOfTheBinary) {
  CommandResult r = Template({"-f", ProductionValues()});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string config = Documents(r.output)["ConfigMap/krul-config"];
  std::vector<std::string> pending_missing;
  for (const auto& [key, binary] :
       {std::pair<std::string, std::string>{"worker.flags", "krul-worker"},
        {"kvstore.flags", "krul-kvstore"}}) {
    std::set<std::string> known = BinaryFlags(BinDir() + "/" + binary);
    ASSERT_GT(known.size(), 10u) << binary << " --helpfull listed no flags";
    std::vector<std::string> flags = FlagLines(config, key);
    ASSERT_GT(flags.size(), 5u) << key;
    for (const std::string& f : flags) {
      const std::string name = FlagName(f);
      if (known.count(name)) continue;
      if (PendingFlags().count(name)) {
        pending_missing.push_back(binary + " --" + name);
      } else {
        ADD_FAILURE() << key << " passes --" << name << ", which " << binary << " does not have";
      }
    }
  }
  if (!pending_missing.empty()) {
    std::cout << "note: flags the chart uses that these binaries do not have yet (TLS / auth / "
                 "device work in progress): "
              << absl::StrJoin(pending_missing, ", ") << "\n";
  }
}

// The default values' flag files start the real binaries (values parse, ports bind).
TEST_F(HelmChartTest, DefaultFlagFilesStartTheServices) {
  CommandResult r = Template({});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string config = Documents(r.output)["ConfigMap/krul-config"];
  ScopedTempDir tmp("krul-chart-flags");
  const std::string& dir = tmp.path();
  ASSERT_FALSE(dir.empty());
  auto write_flags = [&](const std::string& key, const std::string& binary,
                         const std::vector<std::string>& overrides) {
    std::set<std::string> known = BinaryFlags(BinDir() + "/" + binary);
    std::string text;
    for (const std::string& f : FlagLines(config, key)) {
      if (!known.count(FlagName(f)) && PendingFlags().count(FlagName(f))) continue;
      text += f + "\n";
    }
    // Later flags win: loopback, ephemeral ports, a scratch data folder.
    for (const std::string& o : overrides) text += o + "\n";
    const std::string path = dir + "/" + key;
    EXPECT_TRUE(WriteFile(path, text));
    return path;
  };
  const std::string kv_flags =
      write_flags("kvstore.flags", "krul-kvstore",
                  {"--host=127.0.0.1", "--port=0", "--metrics_port=0",
                   "--rocksdb_path=" + dir + "/kv", "--dram_capacity=64M"});
  auto kv = testing::ChildProcess::Start({BinDir() + "/krul-kvstore", "--flagfile=" + kv_flags},
                                         "listening on");
  ASSERT_TRUE(kv.ok()) << kv.status();
  std::vector<std::string> parts = absl::StrSplit((*kv)->ready_line(), ' ');
  auto at = std::find(parts.begin(), parts.end(), "on");
  ASSERT_TRUE(at != parts.end() && at + 1 != parts.end()) << (*kv)->ready_line();
  const std::string w_flags =
      write_flags("worker.flags", "krul-worker",
                  {"--host=127.0.0.1", "--http_port=0", "--kvstore=" + *(at + 1), "--threads=1"});
  auto worker = testing::ChildProcess::Start({BinDir() + "/krul-worker", "--flagfile=" + w_flags},
                                             "listening on", absl::Seconds(60));
  ASSERT_TRUE(worker.ok()) << worker.status();
  EXPECT_EQ((*worker)->Terminate(), 0);
  EXPECT_EQ((*kv)->Terminate(), 0);
}

}  // namespace
}  // namespace krul::deploy_test
