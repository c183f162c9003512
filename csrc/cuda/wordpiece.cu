// CUDA WordPiece for a batch: LinMaxMatch over the words of many texts, one thread per word.
//
// The words come from the C++ core (Tokenizer::split_words: special tokens, cleaning, normalization and
// pre-tokenization on the CPU); the vocabulary trie with failure links and pops is the core's own
// (WordPieceTrie::export_arrays), copied to the device once. Each word w writes at most
// max(1, len(w)) ids (a piece covers at least one byte) at out_start[w] and its count at out_count[w];
// the Python side (fastbert/tokenization_bert.py) compacts them and adds [CLS]/[SEP] with torch ops.
//
// Built as the plain pybind11 + nvcc module fastbert._C_cuda: every buffer is allocated by torch and
// passed as a device pointer (tensor.data_ptr()), so torch is not needed at build time.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace py = pybind11;

namespace {

struct TrieView {
  const int32_t* nodes;  // 5 per node: edge_begin, num_edges, pops_len, fail, pops_begin
  const int32_t* edge_bytes;
  const int32_t* edge_child;
  const int32_t* dense;
  const int32_t* pops;  // 2 per pop: id, len
  int32_t suffix_root;
  int32_t dense_from;
};

__device__ __forceinline__ int32_t trie_child(const TrieView& t, int32_t node, uint8_t byte) {
  const int32_t* n = t.nodes + 5 * static_cast<int64_t>(node);
  const int32_t begin = n[0], count = n[1];
  if (count >= t.dense_from) return t.dense[begin + byte];
  for (int32_t i = 0; i < count; ++i)
    if (t.edge_bytes[begin + i] == byte) return t.edge_child[begin + i];
  return -1;
}

__global__ void wordpiece_kernel(const uint8_t* __restrict__ bytes,      // all words, end to end
                                 const int64_t* __restrict__ starts,     // (num_words,) byte start
                                 const int32_t* __restrict__ fixed,      // (num_words,) id or -1
                                 const int64_t* __restrict__ out_start,  // (num_words,) output slot
                                 int64_t num_words, int64_t total_bytes, TrieView trie, int32_t unk_id,
                                 int32_t* __restrict__ out_ids,          // pieces, by slot
                                 int32_t* __restrict__ out_count) {      // (num_words,) pieces written
  const int64_t w = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (w >= num_words) return;
  int32_t* out = out_ids + out_start[w];
  if (fixed[w] >= 0) {
    out[0] = fixed[w];
    out_count[w] = 1;
    return;
  }
  const int64_t begin = starts[w];
  const int64_t end = w + 1 < num_words ? starts[w + 1] : total_bytes;
  int32_t n = 0, u = 0;
  bool ok = true;
  for (int64_t i = begin; i < end && ok; ++i) {
    const uint8_t b = bytes[i];
    int32_t v;
    while ((v = trie_child(trie, u, b)) < 0) {
      const int32_t* nu = trie.nodes + 5 * static_cast<int64_t>(u);
      if (nu[3] < 0) {
        ok = false;
        break;
      }
      for (int32_t k = 0; k < nu[2]; ++k) out[n++] = trie.pops[2 * (nu[4] + k)];
      u = nu[3];
    }
    u = v;
  }
  while (ok && u != trie.suffix_root && u != 0) {
    const int32_t* nu = trie.nodes + 5 * static_cast<int64_t>(u);
    if (nu[3] < 0) {
      ok = false;
      break;
    }
    for (int32_t k = 0; k < nu[2]; ++k) out[n++] = trie.pops[2 * (nu[4] + k)];
    u = nu[3];
  }
  if (!ok) {
    out[0] = unk_id;
    n = 1;
  }
  out_count[w] = n;
}

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

}  // namespace

// All pointer arguments are CUDA device addresses (torch tensor.data_ptr()); stream is a cudaStream_t
// (torch.cuda.current_stream().cuda_stream).
void launch_wordpiece(uintptr_t bytes, uintptr_t starts, uintptr_t fixed, uintptr_t out_start, int64_t num_words,
                      int64_t total_bytes, uintptr_t nodes, uintptr_t edge_bytes, uintptr_t edge_child,
                      uintptr_t dense, uintptr_t pops, int32_t suffix_root, int32_t dense_from, int32_t unk_id,
                      uintptr_t out_ids, uintptr_t out_count, uintptr_t stream) {
  if (num_words <= 0) return;
  TrieView t{ptr<const int32_t>(nodes), ptr<const int32_t>(edge_bytes), ptr<const int32_t>(edge_child),
             ptr<const int32_t>(dense), ptr<const int32_t>(pops), suffix_root, dense_from};
  const int threads = 128;
  const int64_t blocks = (num_words + threads - 1) / threads;
  wordpiece_kernel<<<static_cast<unsigned>(blocks), threads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      ptr<const uint8_t>(bytes), ptr<const int64_t>(starts), ptr<const int32_t>(fixed),
      ptr<const int64_t>(out_start), num_words, total_bytes, t, unk_id, ptr<int32_t>(out_ids),
      ptr<int32_t>(out_count));
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("wordpiece kernel launch failed: ") + cudaGetErrorString(err));
}

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "fastbert CUDA WordPiece batch path";
  m.def("launch_wordpiece", &launch_wordpiece, "LinMaxMatch WordPiece over a batch of words on the GPU");
}
