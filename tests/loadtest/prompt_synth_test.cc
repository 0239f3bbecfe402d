// Synthesized prompt text: deterministic per block id, prefixes of a block
// are prefixes of its text, lengths follow the scale and the word rate.
#include "trace/prompt_synth.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace krul::loadtest {
namespace {

using ::testing::StartsWith;

int Words(const std::string& text) {
  if (text.empty()) return 0;
  return static_cast<int>(std::count(text.begin(), text.end(), ' ')) + 1;
}

TEST(PromptSynthTest, BlockTextIsDeterministicAndPrefixClosed) {
  const PromptSynth synth(SynthOptions{});
  EXPECT_EQ(synth.BlockText(7, 30), synth.BlockText(7, 30));
  EXPECT_NE(synth.BlockText(7, 30), synth.BlockText(8, 30));
  EXPECT_THAT(synth.BlockText(7, 30), StartsWith(synth.BlockText(7, 12) + " "));
  EXPECT_EQ(Words(synth.BlockText(7, 30)), 30);
  EXPECT_EQ(synth.BlockText(7, 0), "");
}

TEST(PromptSynthTest, ScalingAndWordRate) {
  SynthOptions o;
  o.length_scale = 0.25;
  o.tokens_per_word = 2.0;
  const PromptSynth synth(o);
  EXPECT_EQ(synth.ScaledTokens(512), 128);
  EXPECT_EQ(synth.ScaledTokens(1), 1);  // never rounds a block away
  EXPECT_EQ(synth.ScaledTokens(0), 0);
  EXPECT_EQ(synth.WordsFor(128), 64);
  EXPECT_EQ(synth.WordsFor(1), 1);
}

TEST(PromptSynthTest, MessageTextFillsBlocksInOrderUpToTheLimit) {
  const PromptSynth synth(SynthOptions{});  // 1 token per word, no scaling
  Turn turn;
  turn.blocks = {{100, 4}, {200, 4}, {300, 2}};
  turn.message_tokens = 10;
  EXPECT_EQ(synth.MessageText(turn), synth.BlockText(100, 4) + " " + synth.BlockText(200, 4) + " " +
                                         synth.BlockText(300, 2));
  turn.message_tokens = 6;  // the second block is cut
  EXPECT_EQ(synth.MessageText(turn), synth.BlockText(100, 4) + " " + synth.BlockText(200, 2));
  turn.message_tokens = 10;
  EXPECT_EQ(synth.MessageText(turn, 3), synth.BlockText(100, 3));  // the context limit
  turn.message_tokens = 1;
  EXPECT_EQ(Words(synth.MessageText(turn)), 1);
}

}  // namespace
}  // namespace krul::loadtest
