// Stand-alone driver for the C++ tokenizer core, used by the AddressSanitizer/UBSan test and for
// profiling without Python:  tokenize_main VOCAB TEXT_FILE [repeat]
// Every line of TEXT_FILE is one text (invalid UTF-8 lines must raise, and are counted). Also runs the
// batch encoder (pairs, truncation, padding, 2 threads) over the same lines. Prints counts and a checksum.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "tokenizer.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: tokenize_main VOCAB TEXT_FILE [repeat]\n";
    return 2;
  }
  int repeat = argc > 3 ? std::atoi(argv[3]) : 1;
  std::vector<std::string> vocab;
  {
    std::ifstream f(argv[1], std::ios::binary);
    std::string line;
    while (std::getline(f, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      vocab.push_back(line);
    }
  }
  std::vector<std::string> lines;
  size_t bytes = 0;
  {
    std::ifstream f(argv[2], std::ios::binary);
    std::string line;
    while (std::getline(f, line)) {
      bytes += line.size() + 1;
      lines.push_back(line);
    }
  }
  fastbert::TokenizerOptions opts;
  opts.never_split = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
  fastbert::Tokenizer tok(vocab, opts);
  uint64_t checksum = 0, tokens = 0, invalid = 0;
  auto t0 = std::chrono::steady_clock::now();
  std::vector<int32_t> ids;
  std::vector<int64_t> offsets;
  std::vector<std::string_view> valid;
  for (int r = 0; r < repeat; ++r) {
    for (const auto& s : lines) {
      ids.clear();
      offsets.clear();
      try {
        tok.tokenize(s, ids, &offsets);
      } catch (const std::invalid_argument&) {
        ++invalid;
        continue;
      }
      if (r == 0) valid.push_back(s);
      tokens += ids.size();
      for (size_t i = 0; i < ids.size(); ++i) checksum = checksum * 1000003u + ids[i] + 7 * offsets[2 * i];
    }
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // Batch path over the valid lines: pairs, truncation, padding, offsets, threads; then the device
  // path's word split; then a batch of every line, which must report the first invalid one.
  std::vector<std::string_view> first, second, all(lines.begin(), lines.end());
  for (size_t i = 0; i + 1 < valid.size(); i += 2) {
    first.push_back(valid[i]);
    second.push_back(valid[i + 1]);
  }
  std::string words;
  std::vector<int64_t> starts;
  std::vector<int32_t> fixed;
  for (auto v : valid) tok.split_words(v, words, starts, fixed);
  fastbert::EncodeOptions eo;
  eo.cls_id = tok.token_to_id("[CLS]");
  eo.sep_id = tok.token_to_id("[SEP]");
  eo.pad_id = tok.token_to_id("[PAD]");
  eo.max_length = 37;
  eo.truncation = fastbert::Truncation::kLongestFirst;
  eo.padding = fastbert::Padding::kLongest;
  eo.offsets = true;
  eo.num_threads = 2;
  uint64_t batch_cells = 0;
  auto out = fastbert::encode_batch(tok, first, &second, eo);
  batch_cells = out.ids.size();
  try {
    fastbert::encode_batch(tok, all, nullptr, eo);
  } catch (const std::invalid_argument& e) {
    std::cout << "batch error: " << e.what() << "\n";
  }
  // Added tokens (normalized ones switch scan to its buffered path; special ones are verbatim): every
  // line with the tokens around it, alone and in a 2-thread batch, split_words and normalize.
  fastbert::TokenizerOptions aopts = opts;
  const int32_t n = static_cast<int32_t>(vocab.size());
  aopts.added = {{"NewTok", n, true}, {"\xe4\xb8\xad" "x", n + 1, true}, {"a b", n + 2, true},
                 {"SpecX", n + 3, false}, {"\xc3\x9cn\xc3\xaf" "code", n + 4, true}};
  fastbert::Tokenizer atok(vocab, aopts);
  std::vector<std::string> decorated;
  for (auto v : valid) decorated.push_back("NEWTOK" + std::string(v) + "SpecX a  b A B \xe4\xb8\xad" "x" + std::string(v));
  uint64_t added_hits = 0;
  for (const auto& s : decorated) {
    ids.clear();
    offsets.clear();
    atok.tokenize(s, ids, &offsets);
    for (int32_t id : ids) added_hits += id >= n;
    checksum = checksum * 1000003u + atok.normalize(s).size();
    atok.split_words(s, words, starts, fixed);
  }
  std::vector<std::string_view> dviews(decorated.begin(), decorated.end());
  auto aout = fastbert::encode_batch(atok, dviews, nullptr, eo);
  batch_cells += aout.ids.size();
  std::printf("added-token hits %llu\n", (unsigned long long)added_hits);
  std::printf("words %zu\n", starts.size());
  std::printf("lines %zu tokens %llu invalid %llu checksum %llu batch_cells %llu MB/s %.1f\n", lines.size(),
              (unsigned long long)tokens, (unsigned long long)invalid, (unsigned long long)checksum,
              (unsigned long long)batch_cells, bytes * repeat / secs / 1e6);
  return 0;
}
