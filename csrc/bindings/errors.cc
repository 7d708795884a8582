#include "bindings/errors.h"

#include "common/error.h"

namespace py = pybind11;

namespace nbdist::bindings {

namespace {

const char* kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidInput:
      return "invalid";
    case ErrorKind::kTimeout:
      return "timeout";
    case ErrorKind::kFailure:
      break;
  }
  return "failure";
}

}  // namespace

void register_error_translator() {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      py::gil_scoped_acquire gil;
      py::object cls = py::module_::import("nbdist._errors")
                           .attr("error_class")(e.subsystem(), kind_name(e.kind()));
      PyErr_SetString(cls.ptr(), e.what());
    }
  });
}

}  // namespace nbdist::bindings
