// Bindings for nbdist::arc: type conversion and GIL release only. python/nbdist/arc owns the
// names, defaults, docstrings and validation messages.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "arc/augment.h"
#include "arc/decoder.h"
#include "arc/grid.h"
#include "arc/selection.h"
#include "arc/text_format.h"

namespace py = pybind11;

namespace nbdist::bindings {

namespace {

using arc::Grid;

// A nested Python sequence of ints -> Grid; anything that is not a rectangular grid of small
// non-negative ints comes back with h == 0 so the decoder counts it as an invalid sample.
Grid grid_from_py(PyObject* obj) {
  Grid g;
  PyObject* rows = PySequence_Fast(obj, "");
  if (!rows) {
    PyErr_Clear();
    return g;
  }
  const Py_ssize_t h = PySequence_Fast_GET_SIZE(rows);
  int w = -1;
  bool ok = h >= 1 && h <= arc::kMaxSide;
  for (Py_ssize_t r = 0; ok && r < h; ++r) {
    PyObject* row = PySequence_Fast(PySequence_Fast_GET_ITEM(rows, r), "");
    if (!row) {
      PyErr_Clear();
      ok = false;
      break;
    }
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(row);
    if (w < 0) w = static_cast<int>(n);
    if (n != w || n < 1 || n > arc::kMaxSide) ok = false;
    for (Py_ssize_t c = 0; ok && c < n; ++c) {
      PyObject* v = PySequence_Fast_GET_ITEM(row, c);
      if (!PyLong_Check(v) || PyBool_Check(v)) {
        ok = false;
        break;
      }
      const long x = PyLong_AsLong(v);
      if (x == -1 && PyErr_Occurred()) PyErr_Clear();
      if (x < 0 || x >= arc::kNumColours) {
        ok = false;
        break;
      }
      g.cells.push_back(static_cast<uint8_t>(x));
    }
    Py_DECREF(row);
  }
  Py_DECREF(rows);
  if (!ok) return Grid{};
  g.h = static_cast<int>(h);
  g.w = w;
  return g;
}

py::list grid_to_py(const Grid& g) {
  PyObject* rows = PyList_New(g.h);
  if (!rows) throw py::error_already_set();
  for (int r = 0; r < g.h; ++r) {
    PyObject* row = PyList_New(g.w);
    if (!row) throw py::error_already_set();
    for (int c = 0; c < g.w; ++c) PyList_SET_ITEM(row, c, PyLong_FromLong(g.at(r, c)));
    PyList_SET_ITEM(rows, r, row);
  }
  return py::reinterpret_steal<py::list>(rows);
}

arc::TextFormat make_format(const std::string& alphabet, const std::string& row_end,
                            const std::string& end_marker) {
  arc::TextFormat f;
  if (alphabet.size() != arc::kNumColours || row_end.empty()) {
    throw arc::ArcError(ErrorKind::kInvalidInput, "alphabet needs 10 bytes and row_end one or more");
  }
  for (int c = 0; c < arc::kNumColours; ++c) f.alphabet[c] = alphabet[c];
  f.row_end = row_end;
  f.end_marker = end_marker;
  return f;
}

arc::AlgoSpec make_spec(int algo, bool common_shape, double baseline) {
  if (algo < 0 || algo > static_cast<int>(arc::Algo::kSimilarity)) {
    throw arc::ArcError(ErrorKind::kInvalidInput, "unknown algorithm id " + std::to_string(algo));
  }
  return arc::AlgoSpec{static_cast<arc::Algo>(algo), common_shape, baseline};
}

py::tuple pack_grids(const std::vector<Grid>& grids) {
  std::string cells;
  std::vector<int32_t> shapes;
  for (const Grid& g : grids) {
    cells.append(reinterpret_cast<const char*>(g.cells.data()), g.cells.size());
    shapes.push_back(g.h);
    shapes.push_back(g.w);
  }
  return py::make_tuple(py::bytes(cells), shapes);
}

std::vector<Grid> grids_from_buffer(const py::bytes& cells, const std::vector<int32_t>& shapes) {
  std::string_view v = cells;
  return arc::unpack_grids(reinterpret_cast<const uint8_t*>(v.data()), v.size(), shapes);
}

void fill_aug(arc::SampleBatch& b, std::vector<int64_t> offsets, std::vector<double> values) {
  b.aug_offsets = std::move(offsets);
  b.aug_values = std::move(values);
}

}  // namespace

void bind_arc(py::module_& m) {
  py::dict ids;
  const char* names[] = {"first_only", "keep_order", "keep_order_unique", "vote",
                         "max_gen_prob", "probsum", "max_aug_prob", "min_aug_prob",
                         "sum_aug_prob", "product_of_experts", "product_of_experts_gen",
                         "similarity"};
  for (int i = 0; i <= static_cast<int>(arc::Algo::kSimilarity); ++i) ids[names[i]] = i;
  m.attr("ALGO_IDS") = ids;

  m.def("parse_suffix", [](const std::string& s) {
    const arc::Transform t = arc::parse_suffix(s);
    py::object perm = py::none();
    if (t.has_perm) perm = py::cast(std::vector<int>(t.perm.begin(), t.perm.end()));
    return py::make_tuple(t.transpose, t.rot, perm, t.example_order);
  });
  m.def("format_suffix", [](bool tp, int rot, std::optional<std::vector<int>> perm,
                            std::vector<int> order) {
    arc::Transform t;
    t.transpose = tp;
    t.rot = rot;
    if (perm) {
      if (perm->size() != arc::kNumColours) {
        throw arc::ArcError(ErrorKind::kInvalidInput, "a colour permutation has 10 entries");
      }
      t.has_perm = true;
      for (int c = 0; c < arc::kNumColours; ++c) t.perm[c] = static_cast<uint8_t>((*perm)[c]);
    }
    t.example_order = std::move(order);
    // Round-trip through the parser so that only well-formed suffixes are ever produced.
    const std::string s = arc::format_suffix(t);
    arc::parse_suffix(s);
    return s;
  });
  m.def("transform_grids", [](const std::string& suffix, py::bytes cells,
                              std::vector<int32_t> shapes, bool inverse) {
    const arc::Transform t = arc::parse_suffix(suffix);
    std::vector<Grid> grids = grids_from_buffer(cells, shapes);
    {
      py::gil_scoped_release nogil;
      for (Grid& g : grids) g = inverse ? arc::invert(t, g) : arc::apply(t, g);
    }
    return pack_grids(grids);
  });
  m.def("transform_scores", [](const std::string& suffix, std::vector<double> values, int h,
                               int w, int channels, bool inverse) {
    const arc::Transform t = arc::parse_suffix(suffix);
    int oh = 0, ow = 0;
    std::vector<double> out = inverse ? arc::invert_scores(t, values, h, w, channels, &oh, &ow)
                                      : arc::apply_scores(t, values, h, w, channels, &oh, &ow);
    return py::make_tuple(out, oh, ow);
  });
  m.def("decode_texts", [](const std::string& alphabet, const std::string& row_end,
                           const std::string& end_marker, std::vector<std::string> texts) {
    const arc::TextFormat f = make_format(alphabet, row_end, end_marker);
    std::vector<Grid> grids(texts.size());
    std::vector<std::string> status(texts.size());
    for (size_t i = 0; i < texts.size(); ++i) {
      status[i] = arc::decode_status_name(arc::decode_text(f, texts[i], &grids[i]));
    }
    py::tuple packed = pack_grids(grids);
    return py::make_tuple(packed[0], packed[1], status);
  });
  m.def("encode_grids", [](const std::string& alphabet, const std::string& row_end,
                           const std::string& end_marker, py::bytes cells,
                           std::vector<int32_t> shapes) {
    const arc::TextFormat f = make_format(alphabet, row_end, end_marker);
    std::vector<std::string> out;
    for (const Grid& g : grids_from_buffer(cells, shapes)) out.push_back(arc::encode_grid(f, g));
    return out;
  });

  py::class_<arc::Decoder>(m, "Decoder")
      .def(py::init([](std::vector<std::string> keys, std::vector<int32_t> tasks, int n_guesses,
                       const std::string& alphabet, const std::string& row_end,
                       const std::string& end_marker) {
        return new arc::Decoder(std::move(keys), std::move(tasks), n_guesses,
                                make_format(alphabet, row_end, end_marker));
      }))
      .def("set_truth",
           [](arc::Decoder& d, int unit, py::bytes cells, int h, int w) {
             std::vector<Grid> g = grids_from_buffer(cells, {h, w});
             d.set_truth(unit, std::move(g[0]));
           })
      .def("add_texts",
           [](arc::Decoder& d, std::vector<std::string> keys, std::vector<std::string> texts,
              std::vector<double> logprobs, std::vector<int64_t> aug_offsets,
              std::vector<double> aug_values) {
             arc::SampleBatch b;
             b.keys = std::move(keys);
             b.texts = std::move(texts);
             b.logprobs = std::move(logprobs);
             fill_aug(b, std::move(aug_offsets), std::move(aug_values));
             py::gil_scoped_release nogil;
             return d.add(b, true);
           })
      .def("add_grids",
           [](arc::Decoder& d, std::vector<std::string> keys, py::sequence grids,
              std::vector<double> logprobs, std::vector<int64_t> aug_offsets,
              std::vector<double> aug_values) {
             arc::SampleBatch b;
             b.keys = std::move(keys);
             b.grids.reserve(py::len(grids));
             for (py::handle g : grids) b.grids.push_back(grid_from_py(g.ptr()));
             b.logprobs = std::move(logprobs);
             fill_aug(b, std::move(aug_offsets), std::move(aug_values));
             py::gil_scoped_release nogil;
             return d.add(b, false);
           })
      .def("rank", [](const arc::Decoder& d, int algo, bool cs, double b,
                      int unit) { return d.rank(make_spec(algo, cs, b), unit); })
      .def("scores",
           [](const arc::Decoder& d, int algo, bool cs, double b, int unit) {
             return arc::candidate_scores(make_spec(algo, cs, b), d.unit(unit));
           })
      .def("select",
           [](const arc::Decoder& d, int algo, bool cs, double b) {
             const auto sel = d.select(make_spec(algo, cs, b));
             py::list out;
             for (const auto& unit : sel) {
               py::list grids;
               for (const Grid* g : unit) grids.append(grid_to_py(*g));
               out.append(grids);
             }
             return out;
           })
      .def("evaluate",
           [](const arc::Decoder& d, int algo, bool cs, double b) {
             arc::AlgoStats s;
             {
               py::gil_scoped_release nogil;
               s = d.evaluate(make_spec(algo, cs, b));
             }
             py::dict r;
             r["score"] = s.score;
             r["score_1"] = s.score_1;
             r["n_tasks"] = s.n_tasks;
             r["n_units"] = s.n_units;
             r["n_oracle"] = s.n_oracle;
             r["n_ranked"] = s.n_ranked;
             r["rank_sum"] = s.rank_sum;
             return r;
           })
      .def("candidates",
           [](const arc::Decoder& d, int unit) {
             py::list out;
             for (const arc::Candidate& c : d.unit(unit).cands) {
               py::object aug = c.has_aug ? py::cast(c.aug_logprobs) : py::none();
               out.append(py::make_tuple(grid_to_py(c.grid), c.gen_logprobs, aug));
             }
             return out;
           })
      .def("sample_candidates",
           [](const arc::Decoder& d, int unit) { return d.unit(unit).sample_cand; })
      .def("truth_index", &arc::Decoder::truth_index)
      .def("n_invalid_in", [](const arc::Decoder& d, int unit) { return d.unit(unit).n_invalid; })
      .def_property_readonly("n_samples", &arc::Decoder::n_samples)
      .def_property_readonly("n_invalid", &arc::Decoder::n_invalid)
      .def_property_readonly("decode_failures", [](const arc::Decoder& d) {
        py::dict r;
        const auto& f = d.decode_failures();
        for (int s = 1; s < 6; ++s) {
          r[arc::decode_status_name(static_cast<arc::DecodeStatus>(s))] = f[s];
        }
        return r;
      });
}

}  // namespace nbdist::bindings
