// Thin pybind11 layer over the C++ tokenizer core. Placeholder until the tokenizer lands.
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastbert compiled core";
  m.attr("__build_info__") = py::str("cpp17");
}
