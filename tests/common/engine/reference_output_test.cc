// The engine must reproduce llama2.c's greedy outputs token for token. The
// references (../shared/data/models/*.greedy64.ref.txt) were produced by the
// unmodified run.c; each file's header names its model and tokenizer.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "krul/engine/engine_cpu.h"
#include "krul/engine/generator.h"
#include "krul/model/model.h"
#include "krul/model/tokenizer.h"
#include "test_support/test_data.h"
#if KRUL_TEST_HAVE_JSON
#include "nlohmann/json.hpp"
#endif

namespace krul {
namespace {

struct Reference {
  std::string prompt;
  std::vector<int> prompt_ids;
  std::vector<int> ids;
  std::string output_json;
};

struct ReferenceFile {
  std::string model;      // relative to the data folder, e.g. models/stories260K.bin
  std::string tokenizer;  // likewise
  int steps = 0;
  std::vector<Reference> records;
};

std::vector<int> ParseIds(const std::string& text) {
  std::vector<int> ids;
  std::istringstream in(text);
  int id;
  while (in >> id) ids.push_back(id);
  return ids;
}

// Parses the documented record format (see the header of each file).
ReferenceFile ParseReferenceFile(const std::string& path) {
  ReferenceFile file;
  std::ifstream in(path);
  std::string line;
  Reference* current = nullptr;
  while (std::getline(in, line)) {
    if (line.rfind("# Model: ", 0) == 0) {
      std::istringstream fields(line.substr(9));
      std::string word;
      fields >> file.model >> word >> file.tokenizer;  // "<model>   Tokenizer: <tok>"
    } else if (line.rfind("# Command per record:", 0) == 0) {
      size_t n = line.find(" -n ");
      if (n != std::string::npos) file.steps = std::stoi(line.substr(n + 4));
    } else if (line.rfind("prompt: ", 0) == 0) {
      file.records.emplace_back();
      current = &file.records.back();
      current->prompt = line.substr(8);
    } else if (current != nullptr && line.rfind("prompt_ids: ", 0) == 0) {
      current->prompt_ids = ParseIds(line.substr(12));
    } else if (current != nullptr && line.rfind("ids: ", 0) == 0) {
      current->ids = ParseIds(line.substr(5));
    } else if (current != nullptr && line.rfind("output_json: ", 0) == 0) {
      current->output_json = line.substr(13);
    }
  }
  return file;
}

std::vector<std::string> ReferenceFiles() {
  std::vector<std::string> files;
  auto dir = testing::DataDirectory("models");
  if (!dir) return files;
  for (const auto& entry : std::filesystem::directory_iterator(*dir)) {
    const std::string name = entry.path().filename().string();
    if (name.ends_with(".greedy64.ref.txt")) {
      files.push_back(entry.path().string());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

// Generates every record of `ref` with `model_path` and checks ids and text.
void CheckAgainstReference(const ReferenceFile& ref, const std::string& model_path,
                           bool use_embedded_vocabulary) {
  auto model = LoadModel(model_path);
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<Tokenizer> tokenizer;
  if (use_embedded_vocabulary) {
    ASSERT_TRUE((*model)->vocabulary().has_value()) << model_path << " has no vocabulary";
    tokenizer = Tokenizer::FromVocabulary(*(*model)->vocabulary());
  } else {
    auto tok_path = testing::DataFile(ref.tokenizer);
    ASSERT_TRUE(tok_path.has_value()) << ref.tokenizer << " named by the reference is missing";
    tokenizer = Tokenizer::FromLlama2cFile(*tok_path, (*model)->config().vocab_size);
  }
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EngineOptions engine_options;
  engine_options.num_threads = 2;
  auto engine = Engine::Create(**model, engine_options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  ASSERT_FALSE(ref.records.empty());
  for (const Reference& record : ref.records) {
    SCOPED_TRACE("prompt: " + record.prompt + " model: " + model_path);
    EXPECT_EQ(tokenizer->Encode(record.prompt, true, false), record.prompt_ids);
    GenerationOptions options;
    options.steps = ref.steps;
    auto result = Generate(**engine, *tokenizer, record.prompt, options);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->tokens, record.ids);
#if KRUL_TEST_HAVE_JSON
    EXPECT_EQ(result->text, nlohmann::json::parse(record.output_json).get<std::string>());
#endif
  }
}

TEST(ReferenceOutputTest, EveryReferenceFileMatchesFromItsLlama2cCheckpoint) {
  const auto files = ReferenceFiles();
  if (files.empty()) {
    GTEST_SKIP() << "no models/*.greedy64.ref.txt under KRUL_DATA_DIR (shared/data absent)";
  }
  for (const std::string& path : files) {
    SCOPED_TRACE(path);
    ReferenceFile ref = ParseReferenceFile(path);
    ASSERT_EQ(ref.steps, 64) << "could not read the step count from the header";
    auto model_path = testing::DataFile(ref.model);
    ASSERT_TRUE(model_path.has_value()) << ref.model << " named by the reference is missing";
    CheckAgainstReference(ref, *model_path, /*use_embedded_vocabulary=*/false);
  }
}

// stories260K.gguf holds the same weights as stories260K.bin (MANIFEST.md),
// so the same reference applies, with tok512.bin and with its own vocabulary.
TEST(ReferenceOutputTest, Stories260KGgufMatchesTheReference) {
  KRUL_REQUIRE_DATA_FILE(ref_path, "models/stories260K.greedy64.ref.txt");
  KRUL_REQUIRE_DATA_FILE(gguf_path, "models/stories260K.gguf");
  ReferenceFile ref = ParseReferenceFile(ref_path);
  CheckAgainstReference(ref, gguf_path, /*use_embedded_vocabulary=*/false);
  CheckAgainstReference(ref, gguf_path, /*use_embedded_vocabulary=*/true);
}

}  // namespace
}  // namespace krul
