// Thin pybind11 layer over the C++ tokenizer core (csrc/tokenizer.h): argument conversion, GIL release,
// numpy arrays that own the C++ buffers. No tokenization logic here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "generated/unicode_tables.h"
#include "tokenizer.h"

namespace py = pybind11;
using fastbert::BatchOutput;
using fastbert::EncodeOptions;
using fastbert::Tokenizer;
using fastbert::TokenizerOptions;

namespace {

// A numpy array that takes ownership of `v` (no copy).
template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(shape, heap->data(), owner);
}

// UTF-8 views of a list of str (CPython caches the UTF-8 form in the str). `keep` holds a reference to
// every str, so the views stay valid with the GIL released even if another thread changes the list.
std::vector<std::string_view> utf8_views(const py::list& texts, const char* what, std::vector<py::object>& keep) {
  std::vector<std::string_view> views;
  views.reserve(texts.size());
  keep.reserve(keep.size() + texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    PyObject* o = PyList_GET_ITEM(texts.ptr(), static_cast<Py_ssize_t>(i));
    keep.push_back(py::reinterpret_borrow<py::object>(o));
    if (!PyUnicode_Check(o)) {
      throw py::type_error(std::string(what) + "[" + std::to_string(i) + "] is " + Py_TYPE(o)->tp_name +
                           ", not str: pass text as str (decode bytes with .decode('utf-8') first)");
    }
    Py_ssize_t n = 0;
    const char* s = PyUnicode_AsUTF8AndSize(o, &n);
    if (!s) {
      PyErr_Clear();
      throw py::value_error(std::string(what) + "[" + std::to_string(i) +
                            "] cannot be encoded as UTF-8 (it contains a lone surrogate code point)");
    }
    views.emplace_back(s, static_cast<size_t>(n));
  }
  return views;
}

py::dict batch_to_dict(BatchOutput&& r, const EncodeOptions& o) {
  const bool offsets = o.offsets;
  py::dict d;
  const bool padded = r.padded;
  std::vector<py::ssize_t> shape = padded ? std::vector<py::ssize_t>{r.rows, r.width}
                                          : std::vector<py::ssize_t>{static_cast<py::ssize_t>(r.ids.size())};
  std::vector<py::ssize_t> oshape = shape;
  oshape.push_back(2);
  d["input_ids"] = to_numpy(std::move(r.ids), shape);
  if (o.type_ids) d["token_type_ids"] = to_numpy(std::move(r.type_ids), shape);
  if (o.attention_mask) d["attention_mask"] = to_numpy(std::move(r.attention_mask), shape);
  if (o.special_tokens_mask) d["special_tokens_mask"] = to_numpy(std::move(r.special_tokens_mask), shape);
  if (offsets) d["offset_mapping"] = to_numpy(std::move(r.offsets), oshape);
  d["lengths"] = to_numpy(std::move(r.lengths), {r.rows});
  d["padded"] = padded;
  return d;
}

// Python ints, each made once per call for the values that repeat (token ids): a list of 100k tokens then
// costs reference increments, not 100k allocations.
struct IntCache {
  std::vector<PyObject*> v;
  explicit IntCache(size_t n) : v(n, nullptr) {}
  ~IntCache() {
    for (PyObject* p : v) Py_XDECREF(p);
  }
  PyObject* get(int64_t x) {
    if (x >= 0 && static_cast<size_t>(x) < v.size()) {
      PyObject*& p = v[static_cast<size_t>(x)];
      if (!p && !(p = PyLong_FromLongLong(x))) throw py::error_already_set();
      Py_INCREF(p);
      return p;
    }
    PyObject* o = PyLong_FromLongLong(x);
    if (!o) throw py::error_already_set();
    return o;
  }
};

// Rows of `v` (a value per token, or 2 per token for offsets: tuples) as a list of lists, built directly;
// row i has sizes[i] tokens, rows laid end to end.
py::list lists_of(const int64_t* v, const std::vector<size_t>& sizes, IntCache& cache, bool pairs_of_two) {
  py::list out(sizes.size());
  size_t at = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const size_t n = sizes[i];
    PyObject* row = PyList_New(static_cast<Py_ssize_t>(n));
    if (!row) throw py::error_already_set();
    for (size_t k = 0; k < n; ++k) {
      PyObject* item;
      if (pairs_of_two) {
        item = PyTuple_New(2);
        if (!item) {
          Py_DECREF(row);
          throw py::error_already_set();
        }
        PyTuple_SET_ITEM(item, 0, cache.get(v[2 * (at + k)]));
        PyTuple_SET_ITEM(item, 1, cache.get(v[2 * (at + k) + 1]));
      } else {
        item = cache.get(v[at + k]);
      }
      PyList_SET_ITEM(row, static_cast<Py_ssize_t>(k), item);
    }
    PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), row);
    at += n;
  }
  return out;
}

std::vector<size_t> row_sizes(const BatchOutput& r) {
  std::vector<size_t> sizes(static_cast<size_t>(r.rows));
  for (size_t i = 0; i < sizes.size(); ++i)
    sizes[i] = r.padded ? static_cast<size_t>(r.width) : static_cast<size_t>(r.lengths[i]);
  return sizes;
}

py::list rows_as_lists(const std::vector<int64_t>& v, const BatchOutput& r, IntCache& cache, bool pairs_of_two) {
  return lists_of(v.data(), row_sizes(r), cache, pairs_of_two);
}

// The cyclic GC is paused while the lists are made: they hold only ints and tuples of ints, and the
// collections a million new containers trigger cost more than making them (~15% of tok(texts)).
struct GcPause {
  int was = PyGC_Disable();
  ~GcPause() {
    if (was) PyGC_Enable();
  }
};

py::dict batch_to_lists(BatchOutput&& r, const EncodeOptions& o) {
  GcPause pause;
  int64_t top = 0;
  if (r.ids.size() > 4096)
    for (int64_t x : r.ids) top = std::max(top, x);
  IntCache ids_cache(r.ids.size() > 4096 ? static_cast<size_t>(top) + 1 : 0), small(2);
  py::dict d;
  d["input_ids"] = rows_as_lists(r.ids, r, ids_cache, false);
  if (o.type_ids) d["token_type_ids"] = rows_as_lists(r.type_ids, r, small, false);
  if (o.attention_mask) d["attention_mask"] = rows_as_lists(r.attention_mask, r, small, false);
  if (o.special_tokens_mask) d["special_tokens_mask"] = rows_as_lists(r.special_tokens_mask, r, small, false);
  if (o.offsets) {
    IntCache offs_cache(0);
    d["offset_mapping"] = rows_as_lists(r.offsets, r, offs_cache, true);
  }
  d["lists"] = true;
  d["padded"] = r.padded;
  const py::ssize_t rows = r.rows;
  d["lengths"] = to_numpy(std::move(r.lengths), {rows});
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastbert compiled core: the C++ WordPiece tokenizer";
  m.attr("__build_info__") = py::str("cpp17");
  m.attr("unicode_classes_version") = py::str(fastbert::unicode::kClassesVersion);
  m.attr("unicode_mappings_version") = py::str(fastbert::unicode::kMappingsVersion);

  m.def(
      "to_lists",
      [](py::array_t<int64_t, py::array::c_style | py::array::forcecast> a, py::object lengths, bool tuples) {
        // numpy (rows, width[, 2]) or flat (n[, 2]) with per-row `lengths` -> lists of lists (of tuples)
        std::vector<size_t> sizes;
        if (lengths.is_none()) {
          if (a.ndim() < 2) throw py::value_error("to_lists: a 2-D array, or a flat one with lengths");
          sizes.assign(static_cast<size_t>(a.shape(0)), static_cast<size_t>(a.shape(1)));
        } else {
          auto l = lengths.cast<py::array_t<int64_t, py::array::c_style | py::array::forcecast>>();
          size_t total = 0;
          for (py::ssize_t i = 0; i < l.size(); ++i) {
            if (l.data()[i] < 0) throw py::value_error("to_lists: negative length");
            sizes.push_back(static_cast<size_t>(l.data()[i]));
            total += sizes.back();
          }
          if (total * (tuples ? 2 : 1) > static_cast<size_t>(a.size()))
            throw py::value_error("to_lists: lengths exceed the array");
        }
        if (tuples && (a.ndim() < 2 || a.shape(a.ndim() - 1) != 2))
          throw py::value_error("to_lists: tuples need a last dimension of 2");
        GcPause pause;
        const int64_t* v = a.data();
        int64_t top = 0;
        const bool big = !tuples && a.size() > 4096;
        if (big)
          for (py::ssize_t i = 0; i < a.size(); ++i) top = std::max(top, v[i]);
        IntCache cache(big ? static_cast<size_t>(std::min<int64_t>(top, 1 << 22)) + 1 : 0);
        return lists_of(v, sizes, cache, tuples);
      },
      py::arg("array"), py::arg("lengths") = py::none(), py::arg("tuples") = false,
      "Rows of an int64 array as Python lists (offsets as tuples), made in C++ with the GC paused.");

  py::class_<Tokenizer, std::shared_ptr<Tokenizer>>(m, "Tokenizer")
      .def(py::init([](std::vector<std::string> vocab, bool clean_text, bool tokenize_chinese_chars,
                       bool strip_accents, bool lowercase, int64_t max_input_chars_per_word,
                       std::string unk_token, std::string prefix, std::vector<std::string> never_split,
                       std::vector<std::tuple<std::string, int32_t, bool>> added) {
             TokenizerOptions o;
             o.clean_text = clean_text;
             o.tokenize_chinese_chars = tokenize_chinese_chars;
             o.strip_accents = strip_accents;
             o.lowercase = lowercase;
             o.max_input_chars_per_word = max_input_chars_per_word;
             o.unk_token = std::move(unk_token);
             o.continuing_subword_prefix = std::move(prefix);
             o.never_split = std::move(never_split);
             for (auto& a : added)
               o.added.push_back(TokenizerOptions::Added{std::get<0>(a), std::get<1>(a), std::get<2>(a)});
             return std::make_shared<Tokenizer>(std::move(vocab), std::move(o));
           }),
           py::arg("vocab"), py::arg("clean_text") = true, py::arg("tokenize_chinese_chars") = true,
           py::arg("strip_accents") = true, py::arg("lowercase") = true,
           py::arg("max_input_chars_per_word") = 100, py::arg("unk_token") = "[UNK]",
           py::arg("continuing_subword_prefix") = "##", py::arg("never_split") = std::vector<std::string>{},
           py::arg("added") = std::vector<std::tuple<std::string, int32_t, bool>>{})
      .def_property_readonly("vocab_size", &Tokenizer::vocab_size)
      .def_property_readonly("unk_id", &Tokenizer::unk_id)
      .def("token_to_id", [](const Tokenizer& t, const std::string& s) { return t.token_to_id(s); })
      .def("normalize", [](const Tokenizer& t, const std::string& s) { return t.normalize(s); },
           "The text as HF's BertNormalizer leaves it (CJK padded with spaces), before added-token matching.")
      .def_property_readonly("has_normalized_added", &Tokenizer::has_normalized_added)
      .def("id_to_token", [](const Tokenizer& t, int32_t id) { return t.id_to_token(id); })
      .def(
          "tokenize",
          [](const Tokenizer& t, const py::str& text, bool offsets) -> py::object {
            py::list one;
            one.append(text);
            std::vector<py::object> keep;
            auto views = utf8_views(one, "text", keep);
            std::vector<int32_t> ids;
            std::vector<int64_t> offs;
            {
              py::gil_scoped_release release;
              t.tokenize(views[0], ids, offsets ? &offs : nullptr);
            }
            std::vector<int64_t> ids64(ids.begin(), ids.end());
            const py::ssize_t n = static_cast<py::ssize_t>(ids64.size());
            auto a = to_numpy(std::move(ids64), {n});
            if (!offsets) return std::move(a);
            return py::make_tuple(a, to_numpy(std::move(offs), {n, 2}));
          },
          py::arg("text"), py::arg("offsets") = false,
          "Word-piece ids (int64 numpy) of one text, no special tokens; with offsets=True also (n, 2) "
          "code point offsets.")
      .def(
          "split_words",
          [](const Tokenizer& t, const py::list& texts) {
            std::vector<py::object> keep;
            auto views = utf8_views(texts, "text", keep);
            std::string bytes;
            std::vector<int64_t> starts, per_text(views.size());
            std::vector<int32_t> fixed;
            {
              py::gil_scoped_release release;
              for (size_t i = 0; i < views.size(); ++i) {
                size_t before = fixed.size();
                t.split_words(views[i], bytes, starts, fixed);
                per_text[i] = static_cast<int64_t>(fixed.size() - before);
              }
            }
            std::vector<uint8_t> b(bytes.begin(), bytes.end());
            const py::ssize_t nb = static_cast<py::ssize_t>(b.size()), nw = static_cast<py::ssize_t>(fixed.size());
            const py::ssize_t nt = static_cast<py::ssize_t>(per_text.size());
            py::dict d;
            d["bytes"] = to_numpy(std::move(b), {nb});
            d["starts"] = to_numpy(std::move(starts), {nw});
            d["fixed"] = to_numpy(std::move(fixed), {nw});
            d["words_per_text"] = to_numpy(std::move(per_text), {nt});
            return d;
          },
          py::arg("texts"),
          "Words before WordPiece (for the CUDA path): normalized UTF-8 `bytes`, word `starts`, `fixed` "
          "ids (special / too long, else -1) and `words_per_text`.")
      .def("trie_arrays",
           [](const Tokenizer& t) {
             auto e = t.trie().export_arrays();
             py::dict d;
             const py::ssize_t nn = static_cast<py::ssize_t>(e.nodes.size() / 5);
             const py::ssize_t np_ = static_cast<py::ssize_t>(e.pops.size() / 2);
             const py::ssize_t ne = static_cast<py::ssize_t>(e.edge_bytes.size());
             const py::ssize_t nc = static_cast<py::ssize_t>(e.edge_child.size());
             const py::ssize_t nd = static_cast<py::ssize_t>(e.dense.size());
             d["nodes"] = to_numpy(std::move(e.nodes), {nn, 5});
             d["edge_bytes"] = to_numpy(std::move(e.edge_bytes), {ne});
             d["edge_child"] = to_numpy(std::move(e.edge_child), {nc});
             d["dense"] = to_numpy(std::move(e.dense), {nd});
             d["pops"] = to_numpy(std::move(e.pops), {np_, 2});
             d["suffix_root"] = e.suffix_root;
             d["dense_from"] = e.dense_from;
             return d;
           })
      .def(
          "encode_batch",
          [](const Tokenizer& t, const py::list& texts, const py::object& pairs, bool add_special_tokens,
             int64_t max_length, int truncation, int padding, int64_t pad_to_multiple_of, bool offsets,
             int num_threads, int32_t cls_id, int32_t sep_id, int32_t pad_id, bool type_ids,
             bool attention_mask, bool special_tokens_mask, bool as_lists, bool truncate_left) {
            std::vector<py::object> keep;
            auto first = utf8_views(texts, "text", keep);
            std::vector<std::string_view> second;
            if (!pairs.is_none()) second = utf8_views(pairs.cast<py::list>(), "text_pair", keep);
            EncodeOptions o;
            o.add_special_tokens = add_special_tokens;
            o.max_length = max_length;
            o.truncation = static_cast<fastbert::Truncation>(truncation);
            o.padding = static_cast<fastbert::Padding>(padding);
            o.pad_to_multiple_of = pad_to_multiple_of;
            o.truncate_left = truncate_left;
            o.offsets = offsets;
            o.num_threads = num_threads;
            o.cls_id = cls_id;
            o.sep_id = sep_id;
            o.pad_id = pad_id;
            o.type_ids = type_ids;
            o.attention_mask = attention_mask;
            o.special_tokens_mask = special_tokens_mask;
            BatchOutput r;
            {
              py::gil_scoped_release release;
              r = fastbert::encode_batch(t, first, pairs.is_none() ? nullptr : &second, o);
            }
            if (as_lists) return batch_to_lists(std::move(r), o);
            return batch_to_dict(std::move(r), o);
          },
          py::arg("texts"), py::arg("pairs") = py::none(), py::arg("add_special_tokens") = true,
          py::arg("max_length") = -1, py::arg("truncation") = 0, py::arg("padding") = 0,
          py::arg("pad_to_multiple_of") = 0, py::arg("offsets") = false, py::arg("num_threads") = 1,
          py::arg("cls_id") = -1, py::arg("sep_id") = -1, py::arg("pad_id") = -1, py::arg("type_ids") = true,
          py::arg("attention_mask") = true, py::arg("special_tokens_mask") = true, py::arg("as_lists") = false,
          py::arg("truncate_left") = false,
          "Encode a list of str (and optional list of pair str) across num_threads threads (<= 0: all "
          "cores) with the GIL released. Returns a dict of int64 numpy arrays: packed (flat, with "
          "per-row `lengths`) when padding == 0, else (rows, width); as_lists=True: Python lists of lists "
          "(offsets as tuples), `lengths` still numpy.");
}
