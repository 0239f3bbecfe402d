// The Helm chart (helm/krul): lint, render with the default and a production-like values
// file and validate every manifest against the Kubernetes schemas (../shared/tools/
// validate-k8s.sh), check that what the production values ask for is rendered, that bad
// values files are refused with a message naming the problem, and that every flag the chart
// passes to the binaries is one they have. Skips with a message when helm is missing.
#include <httplib.h>
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
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "deploy_test_util.h"
#include "gtest/gtest.h"
#include "test_support/child_process.h"
#include "test_support/tls_certs.h"
#include "test_support/wait.h"

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
  // Off (explicitly; the default is on): neither the flag nor the volume.
  CommandResult off = Template({"--set", "auth.kvMac.enabled=false"});
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

// The values that turn every protection off, each with its explicit opt-out.
const std::vector<std::string>& AllProtectionsOff() {
  static const auto* args = new std::vector<std::string>{"--set", "tls.enabled=false",
                                                         "--set", "insecure.allowPlaintext=true",
                                                         "--set", "auth.tenantTokens.enabled=false",
                                                         "--set", "insecure.allowAnyTenant=true",
                                                         "--set", "auth.apiKeys.enabled=false",
                                                         "--set", "worker.insecureHttp=true",
                                                         "--set", "auth.kvMac.enabled=false"};
  return *args;
}

TEST_F(HelmChartTest, EveryRenderedFlagIsAFlagOfTheBinary) {
  // The default values, the production ones, and every protection explicitly off.
  const std::vector<std::string> defaults;
  const std::vector<std::string> production = {"-f", ProductionValues()};
  for (const std::vector<std::string>* args : {&defaults, &production, &AllProtectionsOff()}) {
    SCOPED_TRACE(absl::StrJoin(*args, " "));
    CommandResult r = Template(*args);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const std::string config = Documents(r.output)["ConfigMap/krul-config"];
    for (const auto& [key, binary] :
         {std::pair<std::string, std::string>{"worker.flags", "krul-worker"},
          {"kvstore.flags", "krul-kvstore"}}) {
      std::set<std::string> known = BinaryFlags(BinDir() + "/" + binary);
      ASSERT_GT(known.size(), 10u) << binary << " --helpfull listed no flags";
      std::vector<std::string> flags = FlagLines(config, key);
      ASSERT_GT(flags.size(), 5u) << key;
      for (const std::string& f : flags) {
        EXPECT_TRUE(known.count(FlagName(f)))
            << key << " passes " << f << ", which " << binary << " does not have";
      }
    }
  }
}

// `helm install --dry-run=client`: the rendered release notes (helm template leaves them out).
std::string Notes(const std::string& helm, const std::vector<std::string>& args) {
  std::vector<std::string> argv = {helm,   "install",         "krul", Chart(), "--namespace",
                                   "krul", "--dry-run=client"};
  argv.insert(argv.end(), args.begin(), args.end());
  CommandResult r = RunCommand(argv);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  const size_t at = r.output.find("\nNOTES:\n");
  EXPECT_NE(at, std::string::npos) << r.output;
  return at == std::string::npos ? "" : r.output.substr(at);
}

// Secure by default: the default values turn on mTLS, tenant tokens, API keys and the KV MAC
// key, mount each from a Secret of a default name (never created by the chart), pass no
// --insecure flag, and the release notes say how to create each of those Secrets.
TEST_F(HelmChartTest, DefaultValuesTurnEveryProtectionOnAndNameTheirSecrets) {
  CommandResult r = Template({});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::map<std::string, std::string> docs = Documents(r.output);
  const std::string& sts = docs["StatefulSet/krul-kvstore"];
  const std::string& deploy = docs["Deployment/krul-worker"];
  std::set<std::string> kv_names, w_names;
  for (const auto& f : FlagLines(docs["ConfigMap/krul-config"], "kvstore.flags")) {
    kv_names.insert(FlagName(f));
  }
  for (const auto& f : FlagLines(docs["ConfigMap/krul-config"], "worker.flags")) {
    w_names.insert(FlagName(f));
  }
  for (const char* f :
       {"tls_cert_file", "tls_key_file", "tls_client_ca_file", "tenant_tokens_file"}) {
    EXPECT_TRUE(kv_names.count(f)) << "kvstore.flags lacks --" << f;
  }
  for (const char* f : {"kvstore_tls_ca_file", "kvstore_tls_cert_file", "kvstore_tls_key_file",
                        "kvstore_token_file", "api_keys_file", "kv_mac_key_file"}) {
    EXPECT_TRUE(w_names.count(f)) << "worker.flags lacks --" << f;
  }
  for (const char* f : {"insecure", "insecure_http"}) {
    EXPECT_FALSE(kv_names.count(f)) << "kvstore.flags passes --" << f;
    EXPECT_FALSE(w_names.count(f)) << "worker.flags passes --" << f;
  }
  const std::vector<std::pair<std::string, const std::string*>> secrets = {
      {"krul-kvstore-tls", &sts},   {"krul-kvstore-tenant-tokens", &sts},
      {"krul-worker-tls", &deploy}, {"krul-worker-tenant-token", &deploy},
      {"krul-api-keys", &deploy},   {"krul-kv-mac-key", &deploy}};
  for (const auto& [name, doc] : secrets) {
    EXPECT_TRUE(absl::StrContains(*doc, "secretName: " + name)) << name << " not mounted";
  }
  for (const auto& [id, doc] : docs) EXPECT_FALSE(absl::StartsWith(id, "Secret/")) << id;
  // values-production.yaml names the same Secrets.
  const std::string production = ReadFile(ProductionValues());
  for (const auto& [name, doc] : secrets) {
    EXPECT_TRUE(absl::StrContains(production, name)) << name << " not in values-production";
  }

  const std::string notes = Notes(helm_, {});
  for (const auto& [name, doc] : secrets) {
    EXPECT_TRUE(absl::StrContains(notes, "kubectl -n krul create secret generic " + name))
        << name << " missing from the notes:\n"
        << notes;
  }
  EXPECT_TRUE(absl::StrContains(notes, "krul-kvstore hash-token default")) << notes;
  EXPECT_TRUE(absl::StrContains(notes, "openssl rand -hex 32")) << notes;
  EXPECT_FALSE(absl::StrContains(notes, "WARNING")) << notes;
}

// Turning a protection off needs its explicit opt-out, which renders the binaries' own
// --insecure / --insecure_http and a warning in the release notes.
TEST_F(HelmChartTest, TurningProtectionsOffIsExplicitAndLoud) {
  CommandResult r = Template(AllProtectionsOff());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::map<std::string, std::string> docs = Documents(r.output);
  std::vector<std::string> kv_flags = FlagLines(docs["ConfigMap/krul-config"], "kvstore.flags");
  std::vector<std::string> w_flags = FlagLines(docs["ConfigMap/krul-config"], "worker.flags");
  EXPECT_TRUE(Has(kv_flags, "--insecure")) << absl::StrJoin(kv_flags, "\n");
  EXPECT_TRUE(Has(w_flags, "--insecure")) << absl::StrJoin(w_flags, "\n");
  EXPECT_TRUE(Has(w_flags, "--insecure_http")) << absl::StrJoin(w_flags, "\n");
  EXPECT_FALSE(absl::StrContains(r.output, "secretName:")) << "a Secret is still mounted";
  const std::string notes = Notes(helm_, AllProtectionsOff());
  for (const char* want :
       {"WARNING: INSECURE kvstore", "PLAINTEXT", "authenticates nobody",
        "WARNING: INSECURE workers", "NO API keys", "WARNING: stored KV is not sealed"}) {
    EXPECT_TRUE(absl::StrContains(notes, want)) << want << " not in:\n" << notes;
  }
  EXPECT_FALSE(absl::StrContains(notes, "create secret")) << notes;

  // An opt-out alone changes nothing while its protection is on.
  CommandResult on =
      Template({"--set", "insecure.allowPlaintext=true", "--set", "insecure.allowAnyTenant=true",
                "--set", "worker.insecureHttp=true"});
  ASSERT_EQ(on.exit_code, 0) << on.output;
  for (const std::string& key : {std::string("kvstore.flags"), std::string("worker.flags")}) {
    for (const std::string& f : FlagLines(Documents(on.output)["ConfigMap/krul-config"], key)) {
      EXPECT_FALSE(absl::StartsWith(f, "--insecure")) << key << ": " << f;
    }
  }
  // A loopback worker listener needs no API keys (the binary's own rule).
  EXPECT_EQ(
      Template({"--set", "auth.apiKeys.enabled=false", "--set", "worker.listenAddress=127.0.0.1"})
          .exit_code,
      0);
}

// The default values' flag files start the real binaries once the Secrets' files are where
// the pods mount them: each service's "/etc/krul/" becomes a scratch folder holding the files
// made as the release notes say (certificates from a throwaway CA, `openssl rand` tokens
// hashed by `krul-kvstore hash-token`, `openssl rand -hex 32` for the KV MAC key). Loopback,
// ephemeral ports and the local shard's address replace the pod's. A chat turn then runs
// over mTLS with the tenant token (its persist succeeds) and the API needs a key.
TEST_F(HelmChartTest, DefaultFlagFilesStartTheServices) {
  CommandResult r = Template({});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string config = Documents(r.output)["ConfigMap/krul-config"];
  ScopedTempDir tmp("krul-chart-flags");
  const std::string& dir = tmp.path();
  ASSERT_FALSE(dir.empty());

  absl::StatusOr<testing::TestCerts> certs = testing::MakeTestCerts();
  if (!certs.ok()) GTEST_SKIP() << "no throwaway certificates: " << certs.status();
  const std::string kv_root = dir + "/kvstore-etc-krul";
  const std::string w_root = dir + "/worker-etc-krul";
  auto put = [&](const std::string& path, const std::string& content) {
    ASSERT_EQ(RunCommand({"mkdir", "-p", path.substr(0, path.rfind('/'))}).exit_code, 0);
    ASSERT_TRUE(WriteFile(path, content)) << path;
    ASSERT_EQ(chmod(path.c_str(), 0400), 0) << path;
  };
  const std::string ca = ReadFile(certs->Cert("ca"));
  // Secret krul-kvstore-tls and krul-worker-tls (tls.crt, tls.key, ca.crt).
  put(kv_root + "/tls/tls.crt", ReadFile(certs->Cert("server")));
  put(kv_root + "/tls/tls.key", ReadFile(certs->Key("server")));
  put(kv_root + "/tls/ca.crt", ca);
  put(w_root + "/tls/tls.crt", ReadFile(certs->Cert("client")));
  put(w_root + "/tls/tls.key", ReadFile(certs->Key("client")));
  put(w_root + "/tls/ca.crt", ca);
  // Tenant token, API key, KV MAC key: made with the commands of the release notes.
  auto random_hex = [](int bytes) {
    CommandResult c = RunCommand({"openssl", "rand", "-hex", absl::StrCat(bytes)});
    EXPECT_EQ(c.exit_code, 0) << c.output;
    return c.output;
  };
  auto hash = [&](const std::string& tenant, const std::string& token_file) {
    CommandResult c = RunCommand({"/bin/sh", "-c", "\"$0\" hash-token \"$1\" < \"$2\"",
                                  BinDir() + "/krul-kvstore", tenant, token_file});
    EXPECT_EQ(c.exit_code, 0) << c.output;
    return c.output;
  };
  put(w_root + "/tenant-token/token", random_hex(24));
  put(kv_root + "/tenant-tokens/tokens", hash("default", w_root + "/tenant-token/token"));
  const std::string api_key = std::string(absl::StripAsciiWhitespace(random_hex(24)));
  put(dir + "/api.key", api_key + "\n");
  put(w_root + "/api-keys/api-keys", hash("default", dir + "/api.key"));
  put(w_root + "/kv-mac/kv-mac-key", random_hex(32));
  if (HasFailure()) return;

  auto write_flags = [&](const std::string& key, const std::string& root,
                         const std::vector<std::string>& overrides) {
    std::string text;
    for (const std::string& f : FlagLines(config, key)) {
      text += absl::StrReplaceAll(f, {{"/etc/krul/", root + "/"}}) + "\n";
    }
    // Later flags win: loopback, ephemeral ports, a scratch data folder.
    for (const std::string& o : overrides) text += o + "\n";
    const std::string path = dir + "/" + key;
    EXPECT_TRUE(WriteFile(path, text));
    return path;
  };
  const std::string kv_flags =
      write_flags("kvstore.flags", kv_root,
                  {"--host=127.0.0.1", "--port=0", "--metrics_port=0",
                   "--rocksdb_path=" + dir + "/kv", "--dram_capacity=64M"});
  auto kv = testing::ChildProcess::Start({BinDir() + "/krul-kvstore", "--flagfile=" + kv_flags},
                                         "listening on");
  ASSERT_TRUE(kv.ok()) << kv.status();
  std::vector<std::string> parts = absl::StrSplit((*kv)->ready_line(), ' ');
  auto at = std::find(parts.begin(), parts.end(), "on");
  ASSERT_TRUE(at != parts.end() && at + 1 != parts.end()) << (*kv)->ready_line();
  const std::string w_flags =
      write_flags("worker.flags", w_root,
                  {"--host=127.0.0.1", "--http_port=0", "--kvstore=" + *(at + 1), "--threads=1",
                   "--max_tokens_limit=64", "--default_max_tokens=4"});
  auto worker = testing::ChildProcess::Start({BinDir() + "/krul-worker", "--flagfile=" + w_flags},
                                             "listening on", absl::Seconds(60));
  ASSERT_TRUE(worker.ok()) << worker.status();

  const std::string ready = (*worker)->ready_line();
  httplib::Client client("127.0.0.1", std::stoi(ready.substr(ready.rfind(':') + 1)));
  client.set_read_timeout(60, 0);
  const std::string body =
      R"({"model": "synthetic", "conversation_id": "chart-1", "max_tokens": 4,)"
      R"( "messages": [{"role": "user", "content": "Hello"}]})";
  auto without = client.Post("/v1/chat/completions", body, "application/json");
  ASSERT_TRUE(without) << httplib::to_string(without.error());
  EXPECT_EQ(without->status, 401);
  const httplib::Headers auth = {{"Authorization", "Bearer " + api_key}};
  auto with = client.Post("/v1/chat/completions", auth, body, "application/json");
  ASSERT_TRUE(with) << httplib::to_string(with.error());
  EXPECT_EQ(with->status, 200) << with->body;
  // The turn's KV reaches the kvstore over mTLS with the tenant token (and sealed).
  std::string metrics;
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        auto m = client.Get("/metrics");
        metrics = m ? m->body : "";
        for (absl::string_view line : absl::StrSplit(metrics, '\n')) {
          if (absl::StartsWith(line, "krul_worker_persists_total{") &&
              absl::StrContains(line, "result=\"ok\"") && !absl::EndsWith(line, " 0")) {
            return true;
          }
        }
        return false;
      },
      absl::Seconds(60), "a successful persist"))
      << metrics;
  EXPECT_EQ((*worker)->Terminate(), 0);
  EXPECT_EQ((*kv)->Terminate(), 0);
}

}  // namespace
}  // namespace krul::deploy_test
