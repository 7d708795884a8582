// Bindings for nbdist::launch: type conversion and GIL release only.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <string_view>

#include "launch/lines.h"
#include "launch/process.h"
#include "launch/pyfork.h"
#include "launch/supervisor.h"

namespace py = pybind11;

namespace nbdist::bindings {

using namespace nbdist::launch;

void bind_launch(py::module_& m) {
  py::enum_<JobState>(m, "JobState")
      .value("running", JobState::kRunning)
      .value("succeeded", JobState::kSucceeded)
      .value("failed", JobState::kFailed)
      .value("killed", JobState::kKilled)
      .value("timed_out", JobState::kTimedOut);

  py::class_<RankStatus>(m, "RankStatus")
      .def_readonly("rank", &RankStatus::rank)
      .def_readonly("pid", &RankStatus::pid)
      .def_readonly("attached", &RankStatus::attached)
      .def_readonly("exited", &RankStatus::exited)
      .def_readonly("lost", &RankStatus::lost)
      .def_readonly("wait_status", &RankStatus::wait_status)
      .def_readonly("exit_time", &RankStatus::exit_time)
      .def_readonly("after_teardown", &RankStatus::after_teardown);

  py::class_<RankFds>(m, "RankFds")
      .def_readonly("stdout_w", &RankFds::stdout_w)
      .def_readonly("stderr_w", &RankFds::stderr_w)
      .def_readonly("result_w", &RankFds::result_w)
      .def_readonly("status_w", &RankFds::status_w);

  // The lines Job.stream() shows from the log files, split as the supervisor splits its pipes.
  py::class_<LineSplitter>(m, "LineSplitter")
      .def(py::init<>())
      .def("feed",
           [](LineSplitter& s, py::bytes data) {
             std::string_view view = data;
             py::list out;
             s.feed(view.data(), view.size(),
                    [&](std::string line) { out.append(py::bytes(line)); });
             return out;
           })
      .def("flush", [](LineSplitter& s) {
        py::list out;
        s.flush([&](std::string line) { out.append(py::bytes(line)); });
        return out;
      });

  py::class_<Supervisor>(m, "Supervisor")
      .def(py::init([](std::string job_id, std::string log_dir, int nranks, size_t tail_bytes,
                       size_t line_queue_bytes, bool stream, double grace_s, double timeout_s,
                       double dump_wait_s, std::vector<std::string> log_names) {
             SupervisorOptions o;
             o.job_id = std::move(job_id);
             o.log_dir = std::move(log_dir);
             o.nranks = nranks;
             o.tail_bytes = tail_bytes;
             o.line_queue_bytes = line_queue_bytes;
             o.stream = stream;
             o.grace_s = grace_s;
             o.timeout_s = timeout_s;
             o.dump_wait_s = dump_wait_s;
             o.log_names = std::move(log_names);
             return new Supervisor(std::move(o));
           }),
           py::arg("job_id"), py::arg("log_dir"), py::arg("nranks"), py::arg("tail_bytes"),
           py::arg("line_queue_bytes"), py::arg("stream"), py::arg("grace_s"),
           py::arg("timeout_s"), py::arg("dump_wait_s"),
           py::arg("log_names") = std::vector<std::string>{},
           py::call_guard<py::gil_scoped_release>())
      .def("open_rank", &Supervisor::open_rank, py::arg("rank"), py::arg("external_status"))
      .def(
          "spawn_rank",
          [](Supervisor& s, int rank, std::vector<std::string> argv, std::vector<std::string> env,
             std::string cwd, int result_fd) {
            SpawnSpec spec;
            spec.argv = std::move(argv);
            spec.env = std::move(env);
            spec.cwd = std::move(cwd);
            return s.spawn_rank(rank, std::move(spec), result_fd);
          },
          py::arg("rank"), py::arg("argv"), py::arg("env"), py::arg("cwd"), py::arg("result_fd"),
          py::call_guard<py::gil_scoped_release>())
      .def("attach_rank", &Supervisor::attach_rank, py::arg("rank"), py::arg("pid"))
      .def("seal", &Supervisor::seal)
      .def("kill", &Supervisor::kill, py::arg("grace_s"), py::call_guard<py::gil_scoped_release>())
      .def("wait", &Supervisor::wait, py::arg("timeout_s"), py::arg("or_failed") = false,
           py::call_guard<py::gil_scoped_release>())
      .def("wait_activity", &Supervisor::wait_activity, py::arg("timeout_s"),
           py::arg("or_failed") = false, py::call_guard<py::gil_scoped_release>())
      .def("done", &Supervisor::done)
      .def("failed", &Supervisor::failed)
      .def("take_lines",
           [](Supervisor& s, size_t max_lines) {
             std::vector<Line> lines;
             {
               py::gil_scoped_release release;
               lines = s.take_lines(max_lines);
             }
             py::list out;
             for (auto& l : lines)
               out.append(py::make_tuple(l.rank, l.stream, py::bytes(l.text)));
             return out;
           },
           py::arg("max_lines"))
      .def("set_stream", &Supervisor::set_stream, py::arg("on"))
      .def("state", &Supervisor::state)
      .def("ranks", &Supervisor::ranks)
      .def("result", [](Supervisor& s, int r) { return py::bytes(s.result(r)); }, py::arg("rank"))
      .def("tail", [](Supervisor& s, int r) { return py::bytes(s.tail(r)); }, py::arg("rank"))
      .def("dump", [](Supervisor& s, int r) { return py::bytes(s.dump(r)); }, py::arg("rank"))
      .def("log_path", &Supervisor::log_path, py::arg("rank"))
      .def_property_readonly("started", &Supervisor::started)
      .def_property_readonly("ended", &Supervisor::ended);

  m.def(
      "spawn",
      [](std::vector<std::string> argv, std::vector<std::string> env, std::string cwd,
         std::vector<std::pair<int, int>> fds, int death_signal, bool new_process_group) {
        SpawnSpec spec{std::move(argv), std::move(env), std::move(cwd), std::move(fds),
                       death_signal, new_process_group};
        return spawn(spec);
      },
      py::arg("argv"), py::arg("env"), py::arg("cwd") = "",
      py::arg("fds") = std::vector<std::pair<int, int>>{}, py::arg("death_signal") = 9,
      py::arg("new_process_group") = true, py::call_guard<py::gil_scoped_release>());
  m.def("fork_interpreter", &fork_interpreter, py::arg("fds"), py::arg("keep"),
        py::arg("close_fds"), py::arg("death_signal"), py::arg("track_fd") = -1);
  m.def("signal_name", &signal_name, py::arg("sig"));
  m.def("describe_wait_status", &describe_wait_status, py::arg("status"));
  m.def("kill_group", &kill_group, py::arg("pgid"), py::arg("sig"));
  m.def("monotonic_now", &monotonic_now);
  m.def("reaper_track", &reaper_track, py::arg("pgid"));
  m.def("reaper_untrack", &reaper_untrack, py::arg("pgid"));
  m.def("reaper_control_fd", &reaper_control_fd);
  m.def("register_parent_fd", &register_parent_fd, py::arg("fd"));
  m.def("unregister_parent_fd", &unregister_parent_fd, py::arg("fd"));
}

}  // namespace nbdist::bindings
