// Training a byte-level BPE the way Hugging Face's BpeTrainer does (same words,
// same merge order, same tie-breaking), so HF loads the result and encodes as we do.
//
// The text is pre-tokenized as a whole (as encode() will see it), which equals HF's
// train_from_iterator([text]); HF's train(files) would instead split at every line.
//
// Vocabulary: the special tokens (ids 0..k-1), the 256 byte symbols sorted by
// their printable character, then one token per merge. Each step merges the most
// frequent adjacent pair; ties go to the smallest (left id, right id).
#pragma once
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "text/bpe.h"

namespace bhasa {

struct BpeTrainOptions {
  int vocab_size = 4096;                                 // including the specials and 256 bytes
  std::vector<std::string> special_tokens = {"<|endoftext|>"};
  // Called now and then with (merges done, merges wanted); may be empty.
  std::function<void(int, int)> on_progress;
};

// Trains on UTF-8 text. Throws Error for empty text, invalid UTF-8 (naming the
// byte offset) or a vocab_size too small to hold the specials and the bytes.
BpeTokenizer train_bpe(std::string_view text, const BpeTrainOptions& options);
// The same over several files, read one at a time (word counts are summed).
BpeTokenizer train_bpe_files(const std::vector<std::string>& paths, const BpeTrainOptions& options);

}  // namespace bhasa
