#pragma once

// Maps nbdist::Error (and its subsystem subclasses) to the Python classes in nbdist._errors.
// The lookup happens at throw time: nbdist._errors is always imported before any binding runs,
// and resolving lazily avoids an import cycle while the extension itself is being imported.

#include <pybind11/pybind11.h>

namespace nbdist::bindings {

void register_error_translator();

}  // namespace nbdist::bindings
