// fastbert WordPiece tokenizer core (see tokenizer.h).
#include "tokenizer.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>

#include "generated/unicode_tables.h"

namespace fastbert {

namespace {

inline uint8_t char_flags(uint32_t cp) {
  return unicode::kStage2[static_cast<size_t>(unicode::kStage1[cp >> 8]) * 256 + (cp & 255)];
}

// Slice [begin, end) of a generated mapping's pool for cp, or {nullptr, 0}.
inline std::pair<const uint32_t*, uint32_t> lookup(const uint32_t* keys, const uint32_t* offsets,
                                                    const uint32_t* pool, uint32_t count, uint32_t cp) {
  const uint32_t* it = std::lower_bound(keys, keys + count, cp);
  if (it == keys + count || *it != cp) return {nullptr, 0};
  size_t i = static_cast<size_t>(it - keys);
  return {pool + offsets[i], offsets[i + 1] - offsets[i]};
}

inline void append_utf8(std::string& s, uint32_t cp) {
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    s.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    s.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Decodes one code point at text[pos]; returns its byte length, or 0 for invalid UTF-8 (overlong forms,
// surrogates, > U+10FFFF and truncated sequences are all invalid).
inline size_t decode_utf8(std::string_view text, size_t pos, uint32_t* cp) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  size_t n = text.size() - pos;
  unsigned char c = s[pos];
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  auto cont = [&](size_t i) { return i < n && (s[pos + i] & 0xC0) == 0x80; };
  if (c >= 0xC2 && c <= 0xDF) {
    if (!cont(1)) return 0;
    *cp = ((c & 0x1Fu) << 6) | (s[pos + 1] & 0x3Fu);
    return 2;
  }
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    uint32_t v = ((c & 0x0Fu) << 12) | ((s[pos + 1] & 0x3Fu) << 6) | (s[pos + 2] & 0x3Fu);
    if (v < 0x800 || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    uint32_t v = ((c & 0x07u) << 18) | ((s[pos + 1] & 0x3Fu) << 12) | ((s[pos + 2] & 0x3Fu) << 6) |
                 (s[pos + 3] & 0x3Fu);
    if (v < 0x10000 || v > 0x10FFFF) return 0;
    *cp = v;
    return 4;
  }
  return 0;
}

}  // namespace

// ---- LinMaxMatch trie -------------------------------------------------------------------------------

WordPieceTrie::WordPieceTrie(const std::vector<std::string>& tokens, const std::string& prefix) {
  if (prefix.empty()) throw std::invalid_argument("continuing_subword_prefix must not be empty");
  // 1. A build-time trie (insertion order ids), edges sorted by byte.
  std::vector<std::vector<std::pair<uint8_t, int32_t>>> edges(1);
  std::vector<int32_t> accept(1, -1), depth(1, 0);
  auto find = [&](int32_t node, uint8_t b) -> int32_t {
    for (auto& e : edges[node])
      if (e.first == b) return e.second;
    return -1;
  };
  auto insert = [&](std::string_view s) -> int32_t {
    int32_t node = 0;
    for (unsigned char b : s) {
      int32_t c = find(node, b);
      if (c < 0) {
        c = static_cast<int32_t>(edges.size());
        edges.emplace_back();
        accept.push_back(-1);
        depth.push_back(depth[node] + 1);
        edges[node].emplace_back(b, c);
      }
      node = c;
    }
    return node;
  };
  const int32_t suffix_old = insert(prefix);
  for (size_t id = 0; id < tokens.size(); ++id) {
    const std::string& t = tokens[id];
    if (t.empty() || t == prefix) continue;  // cannot be matched as a word piece
    accept[insert(t)] = static_cast<int32_t>(id);
  }
  for (auto& e : edges) std::sort(e.begin(), e.end());

  // 2. Breadth-first renumbering (root = 0) and flat arrays.
  const size_t num_nodes = edges.size();
  std::vector<int32_t> order{0}, renum(num_nodes, -1);
  renum[0] = 0;
  for (size_t i = 0; i < order.size(); ++i)
    for (auto& e : edges[order[i]]) {
      renum[e.second] = static_cast<int32_t>(order.size());
      order.push_back(e.second);
    }
  nodes_.assign(num_nodes, Node{});
  for (size_t i = 0; i < num_nodes; ++i) {
    const auto& es = edges[order[i]];
    if (es.size() > 256) throw std::logic_error("trie fan-out > 256");
    nodes_[i].num_edges = static_cast<uint16_t>(es.size());
    if (es.size() >= kDenseFrom) {
      nodes_[i].edge_begin = static_cast<uint32_t>(dense_.size());
      dense_.resize(dense_.size() + 256, -1);
      for (auto& e : es) dense_[nodes_[i].edge_begin + e.first] = renum[e.second];
    } else {
      nodes_[i].edge_begin = static_cast<uint32_t>(edge_bytes_.size());
      for (auto& e : es) {
        edge_bytes_.push_back(e.first);
        edge_child_.push_back(renum[e.second]);
      }
    }
  }
  suffix_root_ = renum[suffix_old];
  const int32_t plen = static_cast<int32_t>(prefix.size());

  // 3. Failure links and pops, breadth first (Song et al. 2021, Algorithm 2). In BFS numbering a
  //    parent is always visited before its children.
  std::vector<uint8_t> in_suffix(num_nodes, 0);
  std::vector<Pop> scratch;
  for (size_t ui = 0; ui < num_nodes; ++ui) {
    const int32_t u = static_cast<int32_t>(ui);
    const Node nu = nodes_[u];
    for (const auto& e : edges[order[u]]) {
      const uint8_t c = e.first;
      const int32_t v = renum[e.second];
      const int32_t old_v = order[v];
      in_suffix[v] = in_suffix[u] || v == suffix_root_;
      if (v == suffix_root_) continue;  // f = null, F = []
      Node& nv = nodes_[v];
      if (accept[old_v] >= 0) {
        nv.fail = suffix_root_;
        nv.pops_begin = static_cast<uint32_t>(pops_.size());
        nv.pops_len = 1;
        pops_.push_back(Pop{accept[old_v], depth[old_v] - (in_suffix[v] ? plen : 0)});
        continue;
      }
      scratch.clear();
      int32_t z = nu.fail;
      while (z >= 0 && child(z, c) < 0) {
        const Node& nz = nodes_[z];
        scratch.insert(scratch.end(), pops_.begin() + nz.pops_begin, pops_.begin() + nz.pops_begin + nz.pops_len);
        z = nz.fail;
      }
      if (z < 0) continue;
      const size_t len = static_cast<size_t>(nu.pops_len) + scratch.size();
      if (len > 0xFFFF) continue;  // pathological vocabulary: leave f = null (the word becomes [UNK])
      nv.fail = child(z, c);
      nv.pops_begin = static_cast<uint32_t>(pops_.size());
      for (uint32_t i = 0; i < nu.pops_len; ++i) pops_.push_back(pops_[nu.pops_begin + i]);
      pops_.insert(pops_.end(), scratch.begin(), scratch.end());
      nv.pops_len = static_cast<uint16_t>(len);
    }
  }
}

WordPieceTrie::Export WordPieceTrie::export_arrays() const {
  Export e;
  for (const Node& n : nodes_) {
    e.nodes.insert(e.nodes.end(), {static_cast<int32_t>(n.edge_begin), static_cast<int32_t>(n.num_edges),
                                   static_cast<int32_t>(n.pops_len), n.fail, static_cast<int32_t>(n.pops_begin)});
  }
  e.edge_bytes.assign(edge_bytes_.begin(), edge_bytes_.end());
  e.edge_child = edge_child_;
  e.dense = dense_;
  for (const Pop& p : pops_) e.pops.insert(e.pops.end(), {p.id, p.len});
  e.suffix_root = suffix_root_;
  e.dense_from = static_cast<int32_t>(kDenseFrom);
  return e;
}

bool WordPieceTrie::tokenize(std::string_view word, std::vector<Piece>& out) const {
  const size_t start = out.size();
  int32_t u = 0;
  int32_t cur = 0;
  auto pop = [&](const Node& n) {
    const Pop* p = pops_.data() + n.pops_begin;
    for (uint32_t i = 0; i < n.pops_len; ++i) {
      out.push_back(Piece{p[i].id, cur, cur + p[i].len});
      cur += p[i].len;
    }
  };
  for (size_t i = 0; i < word.size(); ++i) {
    const uint8_t b = static_cast<uint8_t>(word[i]);
    int32_t v;
    while ((v = child(u, b)) < 0) {
      const Node& n = nodes_[u];
      if (n.fail < 0) {
        out.resize(start);
        return false;
      }
      pop(n);
      u = n.fail;
    }
    u = v;
  }
  while (u != suffix_root_ && u != 0) {
    const Node& n = nodes_[u];
    if (n.fail < 0) {
      out.resize(start);
      return false;
    }
    pop(n);
    u = n.fail;
  }
  return true;
}

// ---- Tokenizer --------------------------------------------------------------------------------------

// The word being built: normalized UTF-8 bytes, and for each byte the code point index of the input
// character it came from.
struct Tokenizer::Word {
  std::string bytes;
  std::vector<int64_t> origin;
  int64_t chars = 0;
  std::vector<WordPieceTrie::Piece> pieces;
  void push(uint32_t cp, int64_t orig) {
    const size_t before = bytes.size();
    append_utf8(bytes, cp);
    for (size_t i = before; i < bytes.size(); ++i) origin.push_back(orig);
    ++chars;
  }
  void push_ascii(char c, int64_t orig) {
    bytes.push_back(c);
    origin.push_back(orig);
    ++chars;
  }
  void clear() {
    bytes.clear();
    origin.clear();
    chars = 0;
  }
};

Tokenizer::Tokenizer(std::vector<std::string> vocab, TokenizerOptions options)
    : vocab_(std::move(vocab)), opts_(std::move(options)) {
  if (vocab_.empty()) throw std::invalid_argument("the vocabulary is empty");
  if (vocab_.size() > static_cast<size_t>(INT32_MAX)) throw std::invalid_argument("vocabulary too large");
  if (opts_.max_input_chars_per_word < 0) throw std::invalid_argument("max_input_chars_per_word < 0");
  ids_.reserve(vocab_.size() * 2);
  for (size_t i = 0; i < vocab_.size(); ++i) {
    if (vocab_[i].empty()) continue;
    std::string_view t = vocab_[i];
    uint32_t cp;
    for (size_t p = 0; p < t.size();) {
      size_t n = decode_utf8(t, p, &cp);
      if (n == 0)
        throw std::invalid_argument("vocabulary entry " + std::to_string(i) + " is not valid UTF-8");
      p += n;
    }
    ids_[vocab_[i]] = static_cast<int32_t>(i);
  }
  unk_id_ = token_to_id(opts_.unk_token);
  if (unk_id_ < 0)
    throw std::invalid_argument("the unknown token '" + opts_.unk_token + "' is not in the vocabulary");
  trie_ = WordPieceTrie(vocab_, opts_.continuing_subword_prefix);
  for (const std::string& s : opts_.never_split) {
    if (s.empty()) continue;
    int32_t id = token_to_id(s);
    if (id < 0) id = unk_id_;  // a never_split word outside the vocabulary is unknown, as in HF
    int64_t chars = 0;
    uint32_t cp;
    for (size_t p = 0; p < s.size();) {
      size_t n = decode_utf8(s, p, &cp);
      if (n == 0) throw std::invalid_argument("never_split entry is not valid UTF-8");
      p += n;
      ++chars;
    }
    specials_.push_back(Special{s, id, chars});
    special_first_byte_[static_cast<uint8_t>(s[0])] = true;
  }
  for (const auto& a : opts_.added) {
    if (a.content.empty()) continue;
    if (a.id < 0) throw std::invalid_argument("added token '" + a.content + "' has a negative id");
    int64_t chars = 0;
    uint32_t cp;
    for (size_t p = 0; p < a.content.size();) {
      size_t n = decode_utf8(a.content, p, &cp);
      if (n == 0) throw std::invalid_argument("added token is not valid UTF-8");
      p += n;
      ++chars;
    }
    if (!a.normalized) {
      specials_.push_back(Special{a.content, a.id, chars});
      special_first_byte_[static_cast<uint8_t>(a.content[0])] = true;
    }
  }
  std::stable_sort(specials_.begin(), specials_.end(),
                   [](const Special& a, const Special& b) { return a.text.size() > b.text.size(); });
  // Normalized added tokens: their content normalized as HF's AddedVocabulary does (with the normalizer).
  std::vector<uint32_t> cps;
  for (const auto& a : opts_.added) {
    if (a.content.empty() || !a.normalized) continue;
    cps.clear();
    Sink sink{nullptr, nullptr};
    sink.normalized = &cps;
    scan(a.content, sink);
    if (!cps.empty()) norm_added_.push_back(NormAdded{cps, a.id});
  }
  std::stable_sort(norm_added_.begin(), norm_added_.end(),
                   [](const NormAdded& a, const NormAdded& b) { return a.cps.size() > b.cps.size(); });
}

std::string Tokenizer::normalize(std::string_view text) const {
  std::vector<uint32_t> cps;
  Sink sink{nullptr, nullptr};
  sink.normalized = &cps;
  scan(text, sink);
  std::string out;
  for (uint32_t c : cps) append_utf8(out, c);
  return out;
}

int32_t Tokenizer::token_to_id(std::string_view token) const {
  auto it = ids_.find(std::string(token));
  return it == ids_.end() ? -1 : it->second;
}

const std::string& Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= vocab_.size()) throw std::out_of_range("token id out of range");
  return vocab_[id];
}

size_t Tokenizer::match_special(std::string_view text, size_t pos, int32_t* id) const {
  for (const Special& s : specials_) {  // longest first
    if (text.size() - pos >= s.text.size() && text.compare(pos, s.text.size(), s.text) == 0) {
      *id = s.id;
      return s.text.size();
    }
  }
  return 0;
}

void Tokenizer::flush(Word& w, const Sink& sink) const {
  if (w.chars == 0) return;
  std::vector<int32_t>& ids = *sink.ids;
  std::vector<int64_t>* offsets = sink.offsets;
  if (sink.words) {
    sink.starts->push_back(static_cast<int64_t>(sink.words->size()));
    sink.words->append(w.bytes);
    ids.push_back(w.chars <= opts_.max_input_chars_per_word ? -1 : unk_id_);
    w.clear();
    return;
  }
  bool ok = w.chars <= opts_.max_input_chars_per_word;
  if (ok) {
    w.pieces.clear();
    ok = trie_.tokenize(w.bytes, w.pieces);
  }
  if (ok) {
    for (const auto& p : w.pieces) {
      ids.push_back(p.id);
      if (offsets) {
        offsets->push_back(w.origin[p.begin]);
        offsets->push_back(w.origin[p.end - 1] + 1);
      }
    }
  } else {
    ids.push_back(unk_id_);
    if (offsets) {
      offsets->push_back(w.origin.front());
      offsets->push_back(w.origin.back() + 1);
    }
  }
  w.clear();
}

void Tokenizer::tokenize(std::string_view text, std::vector<int32_t>& ids, std::vector<int64_t>* offsets,
                         size_t limit) const {
  Sink sink{&ids, offsets};
  sink.limit = limit;
  scan(text, sink);
}

void Tokenizer::split_words(std::string_view text, std::string& bytes, std::vector<int64_t>& starts,
                            std::vector<int32_t>& fixed) const {
  scan(text, Sink{&fixed, nullptr, &bytes, &starts});
}

void Tokenizer::scan(std::string_view text, const Sink& sink) const {
  thread_local std::vector<int32_t> no_ids;
  std::vector<int32_t>& ids = sink.ids ? *sink.ids : no_ids;
  std::vector<int64_t>* offsets = sink.offsets;
  thread_local Word w;
  w.clear();
  using namespace unicode;
  const bool clean = opts_.clean_text, cjk = opts_.tokenize_chinese_chars;
  const bool strip = opts_.strip_accents, lower = opts_.lowercase;
  const bool normalize_only = sink.normalized != nullptr;
  const bool have_specials = !specials_.empty() && !normalize_only;
  // With normalized added tokens (or in normalize() mode) the normalized characters between two verbatim
  // matches are held in `buf` (HF's NormalizedString, CJK padding spaces included), the added tokens are
  // matched there, leftmost-longest, and the rest goes on to pre-tokenization and WordPiece.
  const bool buffering = normalize_only || !norm_added_.empty();
  thread_local std::vector<NChar> buf;
  buf.clear();
  int64_t ci = 0;  // code point index of the character at byte pos
  // Emits one normalized character of input character `orig`.
  auto emit_word = [&](uint32_t c, int64_t orig) {
    const uint8_t g = char_flags(c);
    if (g & kSpace) {
      flush(w, sink);
    } else if (g & kPunct) {
      flush(w, sink);
      w.push(c, orig);
      flush(w, sink);
    } else {
      w.push(c, orig);
    }
  };
  auto emit = [&](uint32_t c, int64_t orig) {
    if (buffering)
      buf.push_back(NChar{c, orig});
    else
      emit_word(c, orig);
  };
  // The normalized characters in `buf`: added tokens out, the rest to emit_word.
  auto drain = [&]() {
    if (normalize_only) {
      for (const NChar& c : buf) sink.normalized->push_back(c.cp);
      buf.clear();
      return;
    }
    const size_t n = buf.size();
    for (size_t i = 0; i < n;) {
      const NormAdded* hit = nullptr;
      for (const NormAdded& a : norm_added_) {  // longest first: leftmost-longest
        const size_t len = a.cps.size();
        if (len > n - i || a.cps[0] != buf[i].cp) continue;
        size_t k = 1;
        while (k < len && a.cps[k] == buf[i + k].cp) ++k;
        if (k == len) {
          hit = &a;
          break;
        }
      }
      if (!hit) {
        emit_word(buf[i].cp, buf[i].orig);
        ++i;
        continue;
      }
      flush(w, sink);
      if (sink.words) sink.starts->push_back(static_cast<int64_t>(sink.words->size()));
      ids.push_back(hit->id);
      if (offsets) {
        offsets->push_back(buf[i].orig);
        offsets->push_back(buf[i + hit->cps.size() - 1].orig + 1);
      }
      i += hit->cps.size();
    }
    buf.clear();
  };
  auto emit_lower = [&](uint32_t c, int64_t orig) {
    if (lower && (char_flags(c) & kLower)) {
      auto m = lookup(kLowerKeys, kLowerOffsets, kLowerPool, kLowerCount, c);
      for (uint32_t i = 0; i < m.second; ++i) emit(m.first[i], orig);
    } else {
      emit(c, orig);
    }
  };
  // Accent stripping is NFD then dropping Mn. NFD's canonical reordering sorts each run of combining
  // characters (class != 0) by class; HF's alignments stay positional: the k-th character of the run
  // that is not an insertion of a decomposition takes the k-th original position, an inserted one
  // takes the alignment of the character before it. `run` holds such a run until a starter ends it.
  struct Pending {
    uint32_t cp;
    uint32_t ccc;
    bool inserted;
  };
  thread_local std::vector<Pending> run;
  thread_local std::vector<int64_t> run_orig;
  run.clear();
  run_orig.clear();
  int64_t last_align = 0;
  auto out_char = [&](uint32_t c, int64_t align) {
    last_align = align;
    if (!(char_flags(c) & kMn)) emit_lower(c, align);
  };
  auto flush_run = [&]() {
    if (run.empty()) return;
    std::stable_sort(run.begin(), run.end(), [](const Pending& x, const Pending& y) { return x.ccc < y.ccc; });
    size_t k = 0;
    for (const Pending& p : run) out_char(p.cp, p.inserted ? last_align : run_orig[k++]);
    run.clear();
    run_orig.clear();
  };
  auto ccc_of = [](uint32_t c) { return lookup(kCccKeys, kCccOffsets, kCccPool, kCccCount, c).first[0]; };
  // One character of (cleaned) input through NFD: starters go out at once, combining ones wait in `run`.
  auto nfd_char = [&](uint32_t c, uint8_t f, int64_t orig) {
    if (!(f & kDecomp)) {
      if (f & kCcc) {
        run.push_back(Pending{c, ccc_of(c), false});
        run_orig.push_back(orig);
      } else {
        flush_run();
        out_char(c, orig);
      }
      return;
    }
    auto m = lookup(kNfdKeys, kNfdOffsets, kNfdPool, kNfdCount, c);
    for (uint32_t i = 0; i < m.second; ++i) {
      const uint32_t e = m.first[i];
      if (char_flags(e) & kCcc) {
        run.push_back(Pending{e, ccc_of(e), i > 0});
        if (i == 0) run_orig.push_back(orig);
      } else {
        flush_run();
        out_char(e, i == 0 ? orig : last_align);
      }
    }
  };
  const size_t limit = sink.limit;
  for (size_t pos = 0; pos < text.size();) {
    if (ids.size() >= limit) break;  // truncation: enough tokens are out
    const unsigned char b = static_cast<unsigned char>(text[pos]);
    if (have_specials && special_first_byte_[b]) {
      int32_t sid;
      size_t n = match_special(text, pos, &sid);
      if (n) {
        flush_run();
        if (buffering) drain();
        flush(w, sink);
        int64_t chars = 0;
        for (size_t p = pos; p < pos + n; ++p) chars += (static_cast<unsigned char>(text[p]) & 0xC0) != 0x80;
        if (sink.words) sink.starts->push_back(static_cast<int64_t>(sink.words->size()));
        ids.push_back(sid);
        if (offsets) {
          offsets->push_back(ci);
          offsets->push_back(ci + chars);
        }
        ci += chars;
        pos += n;
        continue;
      }
    }
    if (b < 0x80 && !buffering) {  // ASCII fast path: no CJK, no decomposition, lower case is A-Z only
      const int64_t orig = ci++;
      ++pos;
      const uint8_t f = char_flags(b);
      if (clean && (f & kRemove)) continue;
      if (!run.empty()) flush_run();
      if (f & (kRemove | kSpace | kPunct)) {
        flush(w, sink);
        if (f & kPunct) {
          w.push_ascii(static_cast<char>(b), orig);
          flush(w, sink);
        }
        continue;
      }
      w.push_ascii(static_cast<char>(lower && b >= 'A' && b <= 'Z' ? b + 32 : b), orig);
      continue;
    }
    uint32_t cp;
    size_t n = decode_utf8(text, pos, &cp);
    if (n == 0) throw std::invalid_argument("invalid UTF-8 at byte " + std::to_string(pos));
    const int64_t orig = ci++;
    pos += n;
    const uint8_t f = char_flags(cp);
    if (clean && (f & kRemove)) continue;
    if (f & kSpace) {
      flush_run();
      if (buffering)
        buf.push_back(NChar{clean ? uint32_t{' '} : cp, orig});
      else
        flush(w, sink);
      continue;
    }
    const bool is_cjk = cjk && (f & kCjk);
    if (is_cjk) {
      flush_run();
      if (buffering)
        buf.push_back(NChar{' ', orig});  // HF pads CJK characters with spaces
      else
        flush(w, sink);
    }
    if (strip) {
      nfd_char(cp, f, orig);
    } else {
      emit_lower(cp, orig);
    }
    if (is_cjk) {
      if (buffering)
        buf.push_back(NChar{' ', orig});
      else
        flush(w, sink);
    }
  }
  flush_run();
  if (buffering) drain();
  flush(w, sink);
}

// ---- batch encoding ---------------------------------------------------------------------------------

namespace {

struct Row {
  std::vector<int32_t> a, b;
  std::vector<int64_t> oa, ob;
};

// HF tokenizers' truncate_encodings; target excludes special tokens.
void truncate(Row& r, bool pair, int64_t target, Truncation how, bool left) {
  auto cut = [left](std::vector<int32_t>& v, std::vector<int64_t>& o, int64_t n) {
    if (static_cast<int64_t>(v.size()) > n) {
      if (left) {  // keep the last n
        const size_t drop = v.size() - static_cast<size_t>(n);
        v.erase(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(drop));
        if (!o.empty()) o.erase(o.begin(), o.begin() + static_cast<std::ptrdiff_t>(2 * drop));
        return;
      }
      v.resize(static_cast<size_t>(n));
      if (!o.empty()) o.resize(static_cast<size_t>(2 * n));
    }
  };
  const int64_t n1 = static_cast<int64_t>(r.a.size()), n2 = static_cast<int64_t>(r.b.size());
  const int64_t total = n1 + (pair ? n2 : 0);
  if (total <= target) return;
  const int64_t to_remove = total - target;
  switch (how) {
    case Truncation::kNone:
      return;
    case Truncation::kLongestFirst: {
      if (!pair) {
        cut(r.a, r.oa, n1 - to_remove);
        return;
      }
      int64_t s1 = n1, s2 = n2;
      bool swap = false;
      if (s1 > s2) {
        std::swap(s1, s2);
        swap = true;
      }
      if (s1 > target) {
        s2 = s1;
      } else {
        s2 = std::max(s1, target - s1);
      }
      if (s1 + s2 > target) {
        s1 = target / 2;
        s2 = s1 + target % 2;
      }
      if (swap) std::swap(s1, s2);
      cut(r.a, r.oa, s1);
      cut(r.b, r.ob, s2);
      return;
    }
    case Truncation::kOnlyFirst:
    case Truncation::kOnlySecond: {
      bool first = how == Truncation::kOnlyFirst || !pair;
      if (how == Truncation::kOnlySecond && !pair)
        throw std::invalid_argument("truncation='only_second' needs a text pair");
      int64_t have = first ? n1 : n2;
      if (have <= to_remove)  // as HF: the truncated sequence must keep at least one token
        throw std::invalid_argument("the sequence to truncate is too short to fit max_length (" +
                                    std::to_string(target) + " tokens besides special tokens); use "
                                    "truncation='longest_first' or a larger max_length");
      if (first)
        cut(r.a, r.oa, have - to_remove);
      else
        cut(r.b, r.ob, have - to_remove);
      return;
    }
  }
}

void encode_row(const Tokenizer& tok, std::string_view a, const std::string_view* b,
                const EncodeOptions& o, Row& r) {
  r.a.clear();
  r.b.clear();
  r.oa.clear();
  r.ob.clear();
  const int64_t specials = o.add_special_tokens ? (b ? 3 : 2) : 0;
  // A single text truncated to max_length: read only until target + 1 tokens are out (one more than
  // kept, so truncate() sees that it must cut and raises where it would have): a 1 MB document cut to
  // 512 tokens costs what 512 tokens cost.
  size_t limit = SIZE_MAX;
  if (!b && !o.truncate_left && o.truncation != Truncation::kNone && o.max_length >= specials)
    limit = static_cast<size_t>(o.max_length - specials) + 1;
  tok.tokenize(a, r.a, o.offsets ? &r.oa : nullptr, limit);
  if (b) tok.tokenize(*b, r.b, o.offsets ? &r.ob : nullptr);
  if (o.truncation != Truncation::kNone && o.max_length >= 0) {
    const int64_t target = o.max_length - specials;
    if (target < 0)
      throw std::invalid_argument("max_length=" + std::to_string(o.max_length) + " is smaller than the " +
                                  std::to_string(specials) + " special tokens added to each sequence");
    truncate(r, b != nullptr, target, o.truncation, o.truncate_left);
  }
}

}  // namespace

BatchOutput encode_batch(const Tokenizer& tok, const std::vector<std::string_view>& first,
                         const std::vector<std::string_view>* second, const EncodeOptions& o) {
  if (second && second->size() != first.size())
    throw std::invalid_argument("text and text_pair must have the same number of entries");
  if (o.add_special_tokens && (o.cls_id < 0 || o.sep_id < 0))
    throw std::invalid_argument("the [CLS]/[SEP] tokens are not in the vocabulary");
  const size_t rows = first.size();
  std::vector<Row> out(rows);
  int threads = o.num_threads > 0 ? o.num_threads : static_cast<int>(std::thread::hardware_concurrency());
  threads = std::max(1, std::min<int>(threads, static_cast<int>((rows + 15) / 16)));
  std::atomic<size_t> next{0};
  std::exception_ptr err;
  std::mutex err_mu;
  auto work = [&]() {
    const size_t chunk = 16;
    for (;;) {
      size_t begin = next.fetch_add(chunk);
      if (begin >= rows) return;
      size_t end = std::min(rows, begin + chunk);
      for (size_t i = begin; i < end; ++i) {
        try {
          encode_row(tok, first[i], second ? &(*second)[i] : nullptr, o, out[i]);
        } catch (const std::invalid_argument& e) {
          std::lock_guard<std::mutex> lk(err_mu);
          if (!err) err = std::make_exception_ptr(std::invalid_argument("text " + std::to_string(i) + ": " + e.what()));
          next.store(rows);
          return;
        } catch (...) {
          std::lock_guard<std::mutex> lk(err_mu);
          if (!err) err = std::current_exception();
          next.store(rows);
          return;
        }
      }
    }
  };
  if (threads == 1) {
    work();
  } else {
    std::vector<std::thread> pool;
    pool.reserve(threads - 1);
    for (int t = 1; t < threads; ++t) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
  }
  if (err) std::rethrow_exception(err);

  BatchOutput res;
  res.rows = static_cast<int64_t>(rows);
  res.lengths.resize(rows);
  const int64_t specials = o.add_special_tokens ? (second ? 3 : 2) : 0;
  std::vector<size_t> row_at(rows + 1, 0);
  int64_t longest = 0;
  for (size_t i = 0; i < rows; ++i) {
    res.lengths[i] = static_cast<int64_t>(out[i].a.size() + out[i].b.size()) + specials;
    longest = std::max(longest, res.lengths[i]);
    row_at[i + 1] = row_at[i] + static_cast<size_t>(res.lengths[i]);
  }
  res.padded = o.padding != Padding::kNone;
  int64_t width = longest;
  if (o.padding == Padding::kMaxLength && o.max_length >= 0) width = std::max(longest, o.max_length);
  if (res.padded && o.pad_to_multiple_of > 0 && width % o.pad_to_multiple_of)
    width += o.pad_to_multiple_of - width % o.pad_to_multiple_of;
  if (res.padded && o.pad_id < 0) throw std::invalid_argument("the [PAD] token is not in the vocabulary");
  res.width = width;
  if (res.padded)
    for (size_t i = 0; i <= rows; ++i) row_at[i] = i * static_cast<size_t>(width);
  const size_t cells = res.padded ? rows * static_cast<size_t>(width) : row_at[rows];
  res.ids.assign(cells, res.padded ? o.pad_id : 0);
  if (o.type_ids) res.type_ids.assign(cells, 0);
  if (o.attention_mask) res.attention_mask.assign(cells, 0);
  if (o.special_tokens_mask) res.special_tokens_mask.assign(cells, 1);
  if (o.offsets) res.offsets.assign(2 * cells, 0);

  // Rows written in parallel: [CLS] a [SEP] (b [SEP]).
  auto write_row = [&](size_t i) {
    const Row& r = out[i];
    size_t at = row_at[i];
    const size_t start = at;
    int64_t* ids = res.ids.data();
    int64_t* offs = o.offsets ? res.offsets.data() : nullptr;
    auto put_seq = [&](const std::vector<int32_t>& v, const std::vector<int64_t>& ov) {
      for (size_t k = 0; k < v.size(); ++k) ids[at + k] = v[k];
      if (offs) std::copy(ov.begin(), ov.end(), offs + 2 * at);
      if (o.special_tokens_mask) std::fill_n(res.special_tokens_mask.data() + at, v.size(), 0);
      at += v.size();
    };
    if (o.add_special_tokens) ids[at++] = o.cls_id;
    put_seq(r.a, r.oa);
    if (o.add_special_tokens) ids[at++] = o.sep_id;
    const size_t first_end = at;
    if (second) {
      put_seq(r.b, r.ob);
      if (o.add_special_tokens) ids[at++] = o.sep_id;
      if (o.type_ids) std::fill(res.type_ids.begin() + first_end, res.type_ids.begin() + at, 1);
    }
    if (o.attention_mask) std::fill(res.attention_mask.begin() + start, res.attention_mask.begin() + at, 1);
  };
  next.store(0);
  auto write_work = [&]() {
    const size_t chunk = 64;
    for (;;) {
      size_t begin = next.fetch_add(chunk);
      if (begin >= rows) return;
      for (size_t i = begin, end = std::min(rows, begin + chunk); i < end; ++i) write_row(i);
    }
  };
  if (threads == 1) {
    write_work();
  } else {
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back(write_work);
    write_work();
    for (auto& t : pool) t.join();
  }
  return res;
}

}  // namespace fastbert
