// Bindings for nbdist::launch: type conversion and GIL release only.

#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace nbdist::bindings {

void bind_launch(py::module_& m) {}

}  // namespace nbdist::bindings
