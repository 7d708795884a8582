// The _ddp extension (LibTorch). Type adaptation only; python/nbdist/ddp owns the ergonomics.
//
// The process group arrives as torch's own pybind object (c10d::ProcessGroup held by
// c10::intrusive_ptr); the cast works because _ddp compiles against torch's bundled pybind11, so
// both modules share pybind11 internals and holder casters.

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/extension.h>

#include "bindings/errors.h"
#include "ddp/checkpoint.h"
#include "ddp/loop.h"
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

// A Reducer may hold the last reference to its process group, and destroying a ProcessGroupGloo
// joins worker threads that may need the GIL to free Python-owned tensors of finished works; so
// the Reducer is deleted with the GIL released (as torch's own c10d bindings do).
struct DeleteWithoutGil {
  void operator()(Reducer* reducer) const {
    if (PyGILState_Check()) {
      py::gil_scoped_release release;
      delete reducer;
    } else {
      delete reducer;
    }
  }
};
using ReducerHolder = std::unique_ptr<Reducer, DeleteWithoutGil>;

}  // namespace

PYBIND11_MODULE(_ddp, m) {
  m.doc() = "nbdist data-parallel core (LibTorch); use nbdist.ddp instead.";
  nbdist::bindings::register_error_translator();
  m.def("_torch_version", [] { return std::string(TORCH_VERSION); });

  py::class_<Reducer, ReducerHolder>(m, "Reducer")
      .def(py::init([](std::vector<at::Tensor> params, std::vector<std::string> names,
                       py::object pg, int64_t bucket_cap_bytes, int64_t first_bucket_bytes,
                       bool find_unused, bool as_view, std::string transport,
                       bool embedding_rows) {
             nbdist::ddp::ReducerOptions o;
             o.bucket_cap_bytes = bucket_cap_bytes;
             o.first_bucket_bytes = first_bucket_bytes;
             o.find_unused_parameters = find_unused;
             o.gradient_as_bucket_view = as_view;
             o.transport = std::move(transport);
             o.embedding_rows = embedding_rows;
             auto group = as_process_group(pg);
             py::gil_scoped_release release;
             return ReducerHolder(new Reducer(std::move(params), std::move(names), group, o));
           }),
           py::arg("params"), py::arg("names"), py::arg("process_group"),
           py::arg("bucket_cap_bytes"), py::arg("first_bucket_bytes"),
           py::arg("find_unused_parameters"), py::arg("gradient_as_bucket_view"),
           py::arg("transport") = "auto", py::arg("embedding_rows") = true)
      .def("verify_and_broadcast", &Reducer::verify_and_broadcast,
           py::call_guard<py::gil_scoped_release>())
      .def("broadcast_buffers", &Reducer::broadcast_buffers, py::arg("buffers"),
           py::arg("root") = 0, py::call_guard<py::gil_scoped_release>())
      .def("set_joining", &Reducer::set_joining, py::arg("on"), py::arg("average_over") = 0)
      .def("shadow_backward", &Reducer::shadow_backward, py::call_guard<py::gil_scoped_release>())
      .def("prepare_forward", &Reducer::prepare_forward, py::call_guard<py::gil_scoped_release>())
      .def("prepare_for_backward", &Reducer::prepare_for_backward,
           py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("rank", &Reducer::rank)
      .def_property_readonly("sharded", &Reducer::sharded)
      .def_property_readonly("world_size", &Reducer::world_size)
      .def_property_readonly("allreduce_count", &Reducer::allreduce_count)
      .def_property_readonly("sync_rounds", &Reducer::sync_rounds)
      .def_property_readonly("num_buckets", &Reducer::num_buckets)
      .def_property_readonly("buckets_rebuilt", &Reducer::buckets_rebuilt)
      .def_property_readonly("transport", &Reducer::transport)
      .def_property_readonly("transport_note", &Reducer::transport_note)
      .def_property_readonly("wants_outputs", &Reducer::wants_outputs)
      .def_property_readonly("embedding_row_exchanges", &Reducer::embedding_row_exchanges)
      .def_property_readonly("embedding_dense_exchanges", &Reducer::embedding_dense_exchanges)
      .def_property_readonly("embedding_copy_engine_exchanges",
                             &Reducer::embedding_copy_engine_exchanges)
      .def("bucket_indices", &Reducer::bucket_indices);

  using nbdist::ddp::TrainConfig;
  py::class_<TrainConfig>(m, "TrainConfig")
      .def(py::init<>())
#define NBDIST_FIELD(name) .def_readwrite(#name, &TrainConfig::name)
      NBDIST_FIELD(max_steps) NBDIST_FIELD(grad_accum) NBDIST_FIELD(lr) NBDIST_FIELD(min_lr)
      NBDIST_FIELD(warmup_steps) NBDIST_FIELD(schedule) NBDIST_FIELD(weight_decay)
      NBDIST_FIELD(beta1) NBDIST_FIELD(beta2) NBDIST_FIELD(eps) NBDIST_FIELD(grad_clip)
      NBDIST_FIELD(precision) NBDIST_FIELD(eval_every) NBDIST_FIELD(eval_steps)
      NBDIST_FIELD(ckpt_dir) NBDIST_FIELD(ckpt_every) NBDIST_FIELD(resume) NBDIST_FIELD(log_every)
      NBDIST_FIELD(tokens_per_micro_batch) NBDIST_FIELD(throughput_unit)
      NBDIST_FIELD(flops_per_token) NBDIST_FIELD(peak_flops)
      NBDIST_FIELD(init_scale) NBDIST_FIELD(growth_factor) NBDIST_FIELD(backoff_factor)
      NBDIST_FIELD(growth_interval) NBDIST_FIELD(shard_optimizer);
#undef NBDIST_FIELD

  m.def(
      "train",
      [](Reducer& reducer, std::vector<at::Tensor> buffers, const TrainConfig& cfg,
         py::object forward_loss, py::object eval_loss, py::object eval_reset,
         py::object data_position, py::object data_seek, py::object log,
         py::object optimizer_step, py::object optimizer_state, py::object optimizer_load) {
        nbdist::ddp::TrainCallbacks cb;
        cb.forward_loss = from_python<at::Tensor, bool>(forward_loss);
        if (!eval_loss.is_none()) {
          // None from Python means "no more eval batches on this rank".
          auto fn = std::make_shared<py::object>(eval_loss);
          cb.eval_loss = [fn]() -> at::Tensor {
            py::gil_scoped_acquire gil;
            py::object r = (*fn)();
            return r.is_none() ? at::Tensor() : r.cast<at::Tensor>();
          };
        }
        cb.eval_reset = from_python<void>(eval_reset);
        cb.data_position = from_python<int64_t>(data_position);
        cb.data_seek = from_python<void, int64_t>(data_seek);
        cb.log = from_python<void, const std::string&>(log);
        cb.optimizer_step = from_python<void, double>(optimizer_step);
        cb.optimizer_state = from_python<at::Tensor>(optimizer_state);
        cb.optimizer_load = from_python<void, const at::Tensor&>(optimizer_load);
        std::vector<nbdist::ddp::StepRecord> history;
        {
          py::gil_scoped_release release;
          history = nbdist::ddp::train(reducer, buffers, cfg, cb);
        }
        py::list out;
        for (const auto& r : history) {
          py::dict d;
          d["step"] = r.step;
          d["loss"] = r.loss;
          d["lr"] = r.lr;
          d["grad_norm"] = r.grad_norm;
          d["scale"] = r.scale;
          d["skipped"] = r.skipped;
          d["seconds"] = r.seconds;
          d["throughput"] = r.throughput;
          d["mfu"] = r.mfu;
          d["eval_loss"] = r.evaluated ? py::object(py::float_(r.eval_loss)) : py::none();
          out.append(d);
        }
        return out;
      },
      py::arg("reducer"), py::arg("buffers"), py::arg("config"), py::arg("forward_loss"),
      py::arg("eval_loss"), py::arg("eval_reset"), py::arg("data_position"), py::arg("data_seek"),
      py::arg("log"), py::arg("optimizer_step") = py::none(),
      py::arg("optimizer_state") = py::none(), py::arg("optimizer_load") = py::none());

  m.def(
      "load_checkpoint",
      [](const std::string& path) -> py::object {
        std::optional<nbdist::ddp::TensorMap> ck;
        {
          py::gil_scoped_release release;
          ck = nbdist::ddp::load_checkpoint(path);
        }
        if (!ck) return py::none();
        py::dict d;
        for (auto& [k, v] : *ck) d[py::str(k)] = v;
        return d;
      },
      py::arg("path"));
}
