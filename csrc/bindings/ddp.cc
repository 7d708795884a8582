// The _ddp extension (LibTorch). Type adaptation only; python/nbdist/ddp owns the ergonomics.

#include <torch/extension.h>

#include "bindings/errors.h"

namespace py = pybind11;

PYBIND11_MODULE(_ddp, m) {
  m.doc() = "nbdist data-parallel core (LibTorch); use nbdist.ddp instead.";
  nbdist::bindings::register_error_translator();
  m.def("_torch_version", [] { return std::string(TORCH_VERSION); });
}
