// The _core extension: type adaptation only (see STYLE.md); python/nbdist owns the ergonomics.

#include <pybind11/pybind11.h>

#include "bindings/errors.h"
#include "common/error.h"

namespace py = pybind11;

namespace nbdist::bindings {
void bind_launch(py::module_& m);
void bind_monitor(py::module_& m);
void bind_arc(py::module_& m);
}  // namespace nbdist::bindings

PYBIND11_MODULE(_core, m) {
  m.doc() = "nbdist C++ core (launcher, GPU monitor, ARC decoder); use the nbdist package instead.";
  nbdist::bindings::register_error_translator();

  // Lets the tests check that every error kind reaches Python as the right class.
  m.def("_raise_for_test", [](const std::string& subsystem, const std::string& kind,
                              const std::string& message) {
    nbdist::ErrorKind k = kind == "invalid"   ? nbdist::ErrorKind::kInvalidInput
                          : kind == "timeout" ? nbdist::ErrorKind::kTimeout
                                              : nbdist::ErrorKind::kFailure;
    struct TestError : nbdist::Error {
      TestError(nbdist::ErrorKind k, const std::string& m, std::string s)
          : nbdist::Error(k, m), s_(std::move(s)) {}
      const char* subsystem() const noexcept override { return s_.c_str(); }
      std::string s_;
    };
    throw TestError(k, message, subsystem);
  });

  py::module_ launch = m.def_submodule("launch");
  nbdist::bindings::bind_launch(launch);
  py::module_ monitor = m.def_submodule("monitor");
  nbdist::bindings::bind_monitor(monitor);
  py::module_ arc = m.def_submodule("arc");
  nbdist::bindings::bind_arc(arc);
}
