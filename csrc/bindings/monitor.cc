// Bindings for nbdist::monitor: type conversion and GIL release only.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "monitor/nvml.h"
#include "monitor/sampler.h"

namespace py = pybind11;

namespace nbdist::bindings {

void bind_monitor(py::module_& m) {
  using namespace nbdist::monitor;
  using release = py::call_guard<py::gil_scoped_release>;

  m.def("now_ns", &now_ns);
  m.def("probe", [] {
    Availability a = Nvml::probe();
    py::dict d;
    d["available"] = a.available;
    d["reason"] = a.reason;
    d["library"] = a.library;
    d["driver_version"] = a.driver_version;
    d["device_count"] = a.device_count;
    return d;
  });

  auto device_dict = [](const DeviceInfo& info) {
    py::dict support;
    support["power"] = info.support.power;
    support["energy"] = info.support.energy;
    support["utilization"] = info.support.utilization;
    support["memory"] = info.support.memory;
    support["temperature"] = info.support.temperature;
    py::dict d;
    d["index"] = info.index;
    d["uuid"] = info.uuid;
    d["name"] = info.name;
    d["memory_total"] = info.memory_total;
    d["support"] = support;
    return d;
  };

  // All NVML devices (index, uuid, name, support matrix); the Python layer maps CUDA ordinals.
  m.def("list_devices", [device_dict] {
    std::vector<DeviceInfo> infos;
    {
      py::gil_scoped_release unlocked;
      auto nvml = Nvml::open();
      for (int i = 0; i < nvml->device_count(); ++i) infos.push_back(nvml->device(i));
    }
    py::list out;
    for (const auto& info : infos) out.append(device_dict(info));
    return out;
  });

  auto stats_dict = [](const WindowStats& w) {
    py::dict d;
    d["t0_ns"] = w.t0_ns;
    d["t1_ns"] = w.t1_ns;
    d["samples"] = w.samples;
    d["method"] = w.method;
    d["energy_j"] = w.energy_j;
    d["counter_j"] = w.counter_j;
    d["integrated_j"] = w.integrated_j;
    d["mean_power_w"] = w.mean_power_w;
    d["peak_power_w"] = w.peak_power_w;
    d["mean_util_gpu"] = w.mean_util_gpu;
    d["mean_util_mem"] = w.mean_util_mem;
    d["peak_mem_used"] = w.peak_mem_used;
    d["peak_temp_c"] = w.peak_temp_c;
    return d;
  };

  py::class_<Sampler>(m, "Sampler")
      .def(py::init([](std::vector<int> devices, double hz, double energy_hz, size_t reserve) {
             SamplerOptions options;
             options.devices = std::move(devices);
             options.hz = hz;
             options.energy_hz = energy_hz;
             options.reserve = reserve;
             return std::make_unique<Sampler>(std::move(options));
           }),
           py::arg("devices"), py::arg("hz"), py::arg("energy_hz"), py::arg("reserve"),
           release())
      .def("start", &Sampler::start, release())
      .def("stop", &Sampler::stop, release())
      .def("mark", &Sampler::mark, release())
      .def_property_readonly("running", &Sampler::running)
      .def_property_readonly("devices",
                             [device_dict](const Sampler& s) {
                               py::list out;
                               for (const auto& info : s.devices()) out.append(device_dict(info));
                               return out;
                             })
      .def_property_readonly("hz", &Sampler::hz)
      .def("series",
           [](const Sampler& s, size_t slot) {
             Series c = s.series(slot);
             py::dict d;
             d["t_ns"] = c.t_ns;
             d["power_w"] = c.power_w;
             d["energy_j"] = c.energy_j;
             d["util_gpu"] = c.util_gpu;
             d["util_mem"] = c.util_mem;
             d["mem_used"] = c.mem_used;
             d["temp_c"] = c.temp_c;
             return d;
           })
      .def("stats",
           [stats_dict](const Sampler& s, size_t slot, int64_t t0, int64_t t1) {
             return stats_dict(s.stats(slot, t0, t1));
           })
      .def("stats_rows",
           [stats_dict](const Sampler& s, size_t slot, size_t row0, size_t row1) {
             return stats_dict(s.stats_rows(slot, row0, row1));
           })
      .def("row_t_ns", &Sampler::row_t_ns)
      .def_property_readonly("counter_reads", &Sampler::counter_reads)
      .def_property_readonly("sample_count", &Sampler::sample_count)
      .def_property_readonly("ticks", &Sampler::ticks)
      .def_property_readonly("late_ticks", &Sampler::late_ticks)
      .def_property_readonly("read_errors", &Sampler::read_errors)
      .def_property_readonly("last_error", &Sampler::last_error)
      .def_property_readonly("thread_cpu_s", &Sampler::thread_cpu_s);
}

}  // namespace nbdist::bindings
