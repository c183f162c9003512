// fastbert's WordPiece tokenizer core: C++17, no Python.
//
// Semantics are those of Hugging Face `tokenizers`' BERT pipeline (BertNormalizer -> BertPreTokenizer ->
// WordPiece), which is what `transformers.BertTokenizer(Fast)` runs:
//   1. special tokens (never_split) are matched verbatim in the raw text and kept whole;
//   2. text cleaning: NUL, U+FFFD and Cc/Cf/Co/Cs characters are dropped, whitespace splits words;
//   3. CJK ideographs become words of their own;
//   4. accent stripping (canonical decomposition, nonspacing marks dropped), then lower-casing;
//   5. punctuation (ASCII ranges + Unicode P*) becomes words of its own;
//   6. each word is split into word pieces by greedy longest-match-first (MaxMatch), computed in linear
//      time with LinMaxMatch (Song et al., "Fast WordPiece Tokenization", EMNLP 2021): a byte trie of
//      the vocabulary with failure links and failure pops; a word longer than
//      max_input_chars_per_word characters, or one MaxMatch cannot cover, becomes the unknown token.
// Offsets are in code points of the input (Python str indices).
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace fastbert {

struct TokenizerOptions {
  bool clean_text = true;
  bool tokenize_chinese_chars = true;
  bool strip_accents = true;  // HF: strip_accents=None follows lowercase; the caller resolves it
  bool lowercase = true;
  int64_t max_input_chars_per_word = 100;
  std::string unk_token = "[UNK]";
  std::string continuing_subword_prefix = "##";
  std::vector<std::string> never_split;  // matched verbatim (leftmost-longest) before normalization
  // Added tokens (HF's AddedVocabulary) with their ids: `normalized` ones are matched (leftmost-longest)
  // in the normalized text of what lies between the verbatim matches; the others verbatim, like never_split.
  struct Added {
    std::string content;
    int32_t id;
    bool normalized;
  };
  std::vector<Added> added;
};

// Vocabulary trie with LinMaxMatch failure links and pops.
class WordPieceTrie {
 public:
  WordPieceTrie() = default;
  // tokens[i] is the string of id i; a later duplicate wins (as in HF's vocab dict).
  WordPieceTrie(const std::vector<std::string>& tokens, const std::string& prefix);

  struct Piece {
    int32_t id;
    int32_t begin, end;  // byte range in the word
  };
  // Appends the MaxMatch pieces of `word` to `out`; returns false (out unchanged) when there is none.
  bool tokenize(std::string_view word, std::vector<Piece>& out) const;

  size_t num_nodes() const { return nodes_.size(); }

  // Flat arrays of the trie, for a device copy (csrc/cuda/wordpiece.cu): per node {edge_begin,
  // num_edges, pops_len, fail, pops_begin} as 5 int32; edge bytes; edge children; dense tables; pops as
  // {id, len} int32 pairs.
  struct Export {
    std::vector<int32_t> nodes, edge_bytes, edge_child, dense, pops;
    int32_t suffix_root, dense_from;
  };
  Export export_arrays() const;

 private:
  // Nodes are numbered breadth first, so the shallow, hot part of the trie is compact in memory; the
  // children of a node are contiguous, sorted by byte, or a direct 256 table for wide nodes (the root).
  struct Node {
    uint32_t edge_begin = 0;
    uint16_t num_edges = 0;
    uint16_t pops_len = 0;
    int32_t fail = -1;  // failure link, -1 = null
    uint32_t pops_begin = 0;
  };
  struct Pop {
    int32_t id;
    int32_t len;  // bytes of word the token covers (without the ## prefix)
  };
  static constexpr uint32_t kDenseFrom = 9;  // nodes with this many children get a direct 256 table
  int32_t child(int32_t node, uint8_t byte) const {
    const Node& n = nodes_[node];
    if (n.num_edges >= kDenseFrom) return dense_[n.edge_begin + byte];
    const uint8_t* b = edge_bytes_.data() + n.edge_begin;
    for (uint32_t i = 0; i < n.num_edges; ++i)
      if (b[i] == byte) return edge_child_[n.edge_begin + i];
    return -1;
  }
  std::vector<Node> nodes_;
  std::vector<uint8_t> edge_bytes_;
  std::vector<int32_t> edge_child_;
  std::vector<int32_t> dense_;  // 256 children per dense node, -1 = none
  std::vector<Pop> pops_;
  int32_t suffix_root_ = 0;
};

class Tokenizer {
 public:
  // Throws std::invalid_argument on an unusable vocabulary (empty, unk token or specials missing...).
  Tokenizer(std::vector<std::string> vocab, TokenizerOptions options);

  // Appends the word-piece ids of `text` (UTF-8) and, when offsets != nullptr, their [begin, end) code
  // point offsets (2 values per token). Throws std::invalid_argument on invalid UTF-8.
  // Stops reading `text` once `limit` ids are out (truncation: the rest cannot change them); the word
  // being read is still finished, so `ids` may hold a few more.
  void tokenize(std::string_view text, std::vector<int32_t>& ids, std::vector<int64_t>* offsets,
                size_t limit = SIZE_MAX) const;

  int32_t token_to_id(std::string_view token) const;  // -1 when absent
  const std::string& id_to_token(int32_t id) const;   // throws std::out_of_range
  size_t vocab_size() const { return vocab_.size(); }
  const TokenizerOptions& options() const { return opts_; }
  int32_t unk_id() const { return unk_id_; }
  const WordPieceTrie& trie() const { return trie_; }

  // The words of `text` before WordPiece, for the device path: appends each word's normalized UTF-8 to
  // `bytes` and its start to `starts`, and to `fixed` the id the word must become whatever WordPiece
  // says (a special token, as a zero-length word; the unknown token for a word longer than
  // max_input_chars_per_word) or -1.
  void split_words(std::string_view text, std::string& bytes, std::vector<int64_t>& starts,
                   std::vector<int32_t>& fixed) const;

  // The normalized text (BertNormalizer: cleaning, CJK padding, accent stripping, lower case) as HF's
  // NormalizedString holds it, UTF-8; no special-token matching.
  std::string normalize(std::string_view text) const;
  bool has_normalized_added() const { return !norm_added_.empty(); }

 private:
  struct Word;
  struct Sink {
    std::vector<int32_t>* ids;
    std::vector<int64_t>* offsets;
    std::string* words = nullptr;  // split_words mode
    std::vector<int64_t>* starts = nullptr;
    size_t limit = SIZE_MAX;
    std::vector<uint32_t>* normalized = nullptr;  // normalize() mode: the normalized characters only
  };
  struct NChar {
    uint32_t cp;
    int64_t orig;
  };

  void scan(std::string_view text, const Sink& sink) const;
  void flush(Word& w, const Sink& sink) const;
  size_t match_special(std::string_view text, size_t pos, int32_t* id) const;

  std::vector<std::string> vocab_;
  std::unordered_map<std::string, int32_t> ids_;
  TokenizerOptions opts_;
  WordPieceTrie trie_;
  int32_t unk_id_ = -1;
  struct Special {
    std::string text;
    int32_t id;
    int64_t chars;
  };
  std::vector<Special> specials_;  // sorted longest first
  struct NormAdded {
    std::vector<uint32_t> cps;  // normalized content
    int32_t id;
  };
  std::vector<NormAdded> norm_added_;  // sorted longest first (stable: earlier added wins a tie)
  bool special_first_byte_[256] = {};
};

// ---- batch encoding: truncation, special tokens, padding, across threads ---------------------------

enum class Truncation { kNone = 0, kLongestFirst = 1, kOnlyFirst = 2, kOnlySecond = 3 };
enum class Padding { kNone = 0, kLongest = 1, kMaxLength = 2 };

struct EncodeOptions {
  bool add_special_tokens = true;
  int64_t max_length = -1;  // -1: none
  Truncation truncation = Truncation::kNone;
  Padding padding = Padding::kNone;
  int64_t pad_to_multiple_of = 0;
  bool truncate_left = false;  // HF's truncation_side="left": keep the last tokens
  bool offsets = false;
  bool type_ids = true, attention_mask = true, special_tokens_mask = true;  // which arrays to fill
  int num_threads = 1;  // <= 0: all hardware threads
  int32_t cls_id = -1, sep_id = -1, pad_id = -1;
};

// Packed (padding kNone: rows laid end to end, `lengths` per row) or padded (rows x width) int64 arrays.
struct BatchOutput {
  int64_t rows = 0, width = 0;
  bool padded = false;
  std::vector<int64_t> ids, type_ids, attention_mask, special_tokens_mask, offsets;  // offsets: 2/token;
  // arrays not asked for in EncodeOptions are left empty
  std::vector<int64_t> lengths;
};

// second: nullptr for single texts, else one pair text per first text.
BatchOutput encode_batch(const Tokenizer& tok, const std::vector<std::string_view>& first,
                         const std::vector<std::string_view>* second, const EncodeOptions& opts);

}  // namespace fastbert
