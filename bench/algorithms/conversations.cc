#include "algorithms/conversations.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace krul::bench {
namespace {

std::string FileStem(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  const size_t dot = name.find('.');
  return dot == std::string::npos ? name : name.substr(0, dot);
}

}  // namespace

absl::StatusOr<std::vector<Conversation>> LoadConversations(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream buf;
  buf << in.rdbuf();
  const std::string text = buf.str();
  const size_t first = text.find_first_not_of(" \t\r\n");
  std::vector<Conversation> out;
  try {
    if (first != std::string::npos && text[first] == '[') {
      const nlohmann::json doc = nlohmann::json::parse(text);
      for (size_t i = 0; i < doc.size(); ++i) {
        const auto& item = doc[i];
        Conversation c;
        c.id = item.contains("id") && item["id"].is_string() ? item["id"].get<std::string>()
                                                             : absl::StrCat("conv-", i);
        c.domain = item.contains("domain") && item["domain"].is_string()
                       ? item["domain"].get<std::string>()
                       : FileStem(path);
        if (!item.contains("conversations") || !item["conversations"].is_array()) continue;
        for (const auto& m : item["conversations"]) {
          if (!m.contains("from") || !m.contains("value") || !m["value"].is_string()) continue;
          const std::string from = m["from"].get<std::string>();
          const std::string value = m["value"].get<std::string>();
          if (from == "human" || from == "user") {
            c.turns.push_back({value, "", {}, {}});
          } else if (!c.turns.empty() && c.turns.back().answer.empty()) {
            c.turns.back().answer = value;
          }
        }
        if (!c.turns.empty()) out.push_back(std::move(c));
      }
    } else {
      std::istringstream lines(text);
      std::string line;
      while (std::getline(lines, line)) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        const nlohmann::json item = nlohmann::json::parse(line);
        if (!item.contains("turns") || !item["turns"].is_array()) continue;
        Conversation c;
        c.domain = item.contains("category") && item["category"].is_string()
                       ? item["category"].get<std::string>()
                       : FileStem(path);
        c.id = item.contains("question_id") ? item["question_id"].dump() : absl::StrCat(out.size());
        for (const auto& t : item["turns"]) {
          if (t.is_string()) c.turns.push_back({t.get<std::string>(), "", {}, {}});
        }
        if (!c.turns.empty()) out.push_back(std::move(c));
      }
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no conversations"));
  return out;
}

absl::StatusOr<std::vector<Conversation>> LoadConversationFiles(const std::string& paths,
                                                                int max_per_file) {
  std::vector<Conversation> out;
  for (absl::string_view part : absl::StrSplit(paths, ',', absl::SkipEmpty())) {
    auto more = LoadConversations(std::string(part));
    if (!more.ok()) return more.status();
    if (max_per_file > 0 && more->size() > static_cast<size_t>(max_per_file)) {
      more->resize(max_per_file);
    }
    for (Conversation& c : *more) out.push_back(std::move(c));
  }
  if (out.empty()) return absl::InvalidArgumentError("no conversation files given");
  return out;
}

std::vector<int> TurnTokens(const Turn& turn) {
  std::vector<int> all = turn.prompt_tokens;
  all.insert(all.end(), turn.answer_tokens.begin(), turn.answer_tokens.end());
  return all;
}

std::vector<double> LogSoftmax(const std::vector<float>& logits) {
  double mx = -INFINITY;
  for (float v : logits) mx = std::max(mx, static_cast<double>(v));
  double sum = 0;
  for (float v : logits) sum += std::exp(v - mx);
  const double lse = mx + std::log(sum);
  std::vector<double> out(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) out[i] = logits[i] - lse;
  return out;
}

double KlDivergence(const std::vector<double>& log_p, const std::vector<double>& log_q) {
  double kl = 0;
  for (size_t v = 0; v < log_p.size() && v < log_q.size(); ++v) {
    kl += std::exp(log_p[v]) * (log_p[v] - log_q[v]);
  }
  return std::max(0.0, kl);
}

}  // namespace krul::bench
