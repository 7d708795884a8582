// The _ddp extension (LibTorch). Type adaptation only; python/nbdist/ddp owns the ergonomics.
//
// The process group arrives as torch's own pybind object (c10d::ProcessGroup held by
// c10::intrusive_ptr); the cast works because _ddp compiles against torch's bundled pybind11, so
// both modules share pybind11 internals and holder casters.

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/extension.h>

#include "bindings/errors.h"
#include "ddp/reducer.h"

namespace py = pybind11;
using nbdist::ddp::Reducer;

namespace {

c10::intrusive_ptr<::c10d::ProcessGroup> as_process_group(const py::object& obj) {
  return py::cast<c10::intrusive_ptr<::c10d::ProcessGroup>>(obj);
}

// Wraps a Python callable so that C++ (running with the GIL released) can call it.
template <typename R, typename... A>
std::function<R(A...)> from_python(py::object fn) {
  if (fn.is_none()) return nullptr;
  auto shared = std::shared_ptr<py::object>(new py::object(std::move(fn)), [](py::object* p) {
    py::gil_scoped_acquire gil;
    delete p;
  });
  return [shared](A... args) -> R {
    py::gil_scoped_acquire gil;
    if constexpr (std::is_void_v<R>) {
      (*shared)(args...);
    } else {
      return (*shared)(args...).template cast<R>();
    }
  };
}

}  // namespace

PYBIND11_MODULE(_ddp, m) {
  m.doc() = "nbdist data-parallel core (LibTorch); use nbdist.ddp instead.";
  nbdist::bindings::register_error_translator();
  m.def("_torch_version", [] { return std::string(TORCH_VERSION); });

  py::class_<Reducer>(m, "Reducer")
      .def(py::init([](std::vector<at::Tensor> params, std::vector<std::string> names,
                       py::object pg, int64_t bucket_cap_bytes, int64_t first_bucket_bytes,
                       bool find_unused, bool as_view) {
             nbdist::ddp::ReducerOptions o;
             o.bucket_cap_bytes = bucket_cap_bytes;
             o.first_bucket_bytes = first_bucket_bytes;
             o.find_unused_parameters = find_unused;
             o.gradient_as_bucket_view = as_view;
             auto group = as_process_group(pg);
             py::gil_scoped_release release;
             return std::make_unique<Reducer>(std::move(params), std::move(names), group, o);
           }),
           py::arg("params"), py::arg("names"), py::arg("process_group"),
           py::arg("bucket_cap_bytes"), py::arg("first_bucket_bytes"),
           py::arg("find_unused_parameters"), py::arg("gradient_as_bucket_view"))
      .def("verify_and_broadcast", &Reducer::verify_and_broadcast,
           py::call_guard<py::gil_scoped_release>())
      .def("broadcast_buffers", &Reducer::broadcast_buffers,
           py::call_guard<py::gil_scoped_release>())
      .def("prepare_forward", &Reducer::prepare_forward, py::call_guard<py::gil_scoped_release>())
      .def("prepare_for_backward", &Reducer::prepare_for_backward,
           py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("rank", &Reducer::rank)
      .def_property_readonly("world_size", &Reducer::world_size)
      .def_property_readonly("allreduce_count", &Reducer::allreduce_count)
      .def_property_readonly("sync_rounds", &Reducer::sync_rounds)
      .def_property_readonly("num_buckets", &Reducer::num_buckets)
      .def_property_readonly("buckets_rebuilt", &Reducer::buckets_rebuilt)
      .def("bucket_indices", &Reducer::bucket_indices);
}
