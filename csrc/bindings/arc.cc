// Bindings for nbdist::arc: type conversion and GIL release only. python/nbdist/arc owns the
// names, defaults, docstrings and validation messages.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>

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
// tolist is called at most once: an object whose tolist() answers another such object (a mock)
// would otherwise recurse until the C stack overflows.
Grid grid_from_py(PyObject* obj, bool via_tolist = false) {
  Grid g;
  if (!PyList_Check(obj) && !PyTuple_Check(obj) && PyObject_HasAttrString(obj, "tolist")) {
    if (via_tolist) return g;
    // numpy arrays (and tensors): their nested-list form holds plain ints.
    py::object as_list =
        py::reinterpret_steal<py::object>(PyObject_CallMethod(obj, "tolist", nullptr));
    if (!as_list) {
      PyErr_Clear();
      return g;
    }
    return grid_from_py(as_list.ptr(), true);
  }
  PyObject* rows = PySequence_Fast(obj, "");
  if (!rows) {
    PyErr_Clear();
    return g;
  }
  const Py_ssize_t h = PySequence_Fast_GET_SIZE(rows);
  int w = -1;
  bool ok = h >= 1 && h <= arc::kMaxSide;
  for (Py_ssize_t r = 0; ok && r < h; ++r) {
    // Reading a row that is not a list or tuple runs its __iter__, which may shrink `rows` (when
    // it is the caller's list) or drop the row's last reference: hold the row, re-check the size.
    if (r >= PySequence_Fast_GET_SIZE(rows)) {
      ok = false;
      break;
    }
    py::object item = py::reinterpret_borrow<py::object>(PySequence_Fast_GET_ITEM(rows, r));
    PyObject* row = PySequence_Fast(item.ptr(), "");
    if (!row) {
      PyErr_Clear();
      ok = false;
      break;
    }
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(row);
    if (w < 0) {
      w = static_cast<int>(n);
      if (n <= arc::kMaxSide) g.cells.reserve(static_cast<size_t>(h) * n);
    }
    if (n != w || n < 1 || n > arc::kMaxSide) ok = false;
    PyObject** items = PySequence_Fast_ITEMS(row);
    for (Py_ssize_t c = 0; ok && c < n; ++c) {
      PyObject* v = items[c];
      long x = -1;
      if (PyLong_CheckExact(v)) {  // the common case
        x = PyLong_AsLong(v);
      } else if (!PyBool_Check(v) && PyIndex_Check(v)) {
        // An integer of another type (numpy.int64 from `[list(r) for r in array]`) is a colour
        // too; bool (an int subclass) is not.
        PyObject* i = PyNumber_Index(v);
        if (i) {
          x = PyLong_AsLong(i);
          Py_DECREF(i);
        }
      }
      if (x == -1 && PyErr_Occurred()) PyErr_Clear();
      if (x < 0 || x >= arc::kNumColours) {
        ok = false;
        break;
      }
      g.cells.push_back(static_cast<uint8_t>(x));
    }
    Py_DECREF(row);
  }
  ok = ok && PySequence_Fast_GET_SIZE(rows) == h;
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

// The record fields add_records reads, in this order.
constexpr int kNumFields = 5;
const char* const kFieldNames[kNumFields] = {"key", "text", "grid", "logprob", "aug_logprobs"};

// One pass over a record dict. Keys written as literals are interned strs, so comparing
// pointers finds them; other equal strs are matched by value. The interned names are
// deliberately never released (they must outlive every call, up to interpreter exit).
void read_fields(PyObject* dict, PyObject** fields) {
  static PyObject** names = [] {
    auto** v = new PyObject*[kNumFields];
    for (int f = 0; f < kNumFields; ++f) v[f] = PyUnicode_InternFromString(kFieldNames[f]);
    return v;
  }();
  Py_ssize_t pos = 0;
  PyObject *k, *v;
  while (PyDict_Next(dict, &pos, &k, &v)) {
    int f = 0;
    while (f < kNumFields && k != names[f]) ++f;
    if (f == kNumFields && PyUnicode_Check(k)) {
      for (f = 0; f < kNumFields && PyUnicode_Compare(k, names[f]) != 0; ++f) {
      }
    }
    if (f < kNumFields) fields[f] = v;
  }
}

inline void prefetch(const void* p) {
#if defined(__GNUC__)
  __builtin_prefetch(p);
#endif
}

// Starts fetching the hash table that PyDict_Next walks (a small dict's fits in three lines).
inline void prefetch_dict_table(PyObject* dict) {
  const char* keys = reinterpret_cast<const char*>(reinterpret_cast<PyDictObject*>(dict)->ma_keys);
  prefetch(keys);
  prefetch(keys + 64);
  prefetch(keys + 128);
}

// A str's UTF-8 bytes; compact ASCII strs (all keys and model texts in practice) are read in
// place without a call. False when obj is not a str (or cannot be encoded).
inline bool str_view(PyObject* obj, std::string_view* out) {
  if (!PyUnicode_Check(obj)) return false;
  if (PyUnicode_IS_COMPACT_ASCII(obj)) {
    *out = std::string_view(static_cast<const char*>(PyUnicode_DATA(obj)),
                            static_cast<size_t>(PyUnicode_GET_LENGTH(obj)));
    return true;
  }
  Py_ssize_t size = 0;
  const char* data = PyUnicode_AsUTF8AndSize(obj, &size);
  if (!data) {
    PyErr_Clear();
    return false;
  }
  *out = std::string_view(data, static_cast<size_t>(size));
  return true;
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
      .def("set_truths",
           [](arc::Decoder& d, std::vector<int> units, py::bytes cells,
              std::vector<int32_t> shapes) {
             std::vector<Grid> grids = grids_from_buffer(cells, shapes);
             if (grids.size() != units.size()) {
               throw arc::ArcError(ErrorKind::kInvalidInput, "one truth per unit");
             }
             for (size_t i = 0; i < units.size(); ++i) {
               if (units[i] < 0 || units[i] >= d.n_units()) {
                 throw arc::ArcError(ErrorKind::kInvalidInput, "unit out of range");
               }
               if (!arc::is_valid_grid(grids[i])) {
                 throw arc::ArcError(ErrorKind::kInvalidInput,
                                     "truth of unit " + d.unit_key(units[i]) + " is not a grid");
               }
               d.set_truth(units[i], std::move(grids[i]));
             }
           })
      .def("add_records",
           [](arc::Decoder& d, py::list records) {
             // Field extraction only; the Python layer words the errors (KeyError/TypeError
             // carry the record index as their first argument). The GIL stays held (this is
             // CPU work, not a wait): the viewed strs stay alive.
             //
             // Records are scattered Python objects, so reading them is bound by memory
             // latency: pass 1 reads every dict's fields while prefetching the dicts ahead,
             // pass 2 (in order, raising at the first bad record) reads the field objects while
             // prefetching those ahead.
             const Py_ssize_t n = PyList_GET_SIZE(records.ptr());
             PyObject** items = PySequence_Fast_ITEMS(records.ptr());
             constexpr Py_ssize_t kAhead = 8;
             std::vector<PyObject*> fields(static_cast<size_t>(n) * kNumFields, nullptr);
             std::vector<uint8_t> is_dict(n);
             for (Py_ssize_t i = 0; i < n; ++i) {
               if (i + 2 * kAhead < n) prefetch(items[i + 2 * kAhead]);
               if (i + kAhead < n && PyDict_CheckExact(items[i + kAhead])) {
                 prefetch_dict_table(items[i + kAhead]);
               }
               PyObject* r = items[i];
               is_dict[i] = PyDict_Check(r);
               if (is_dict[i]) read_fields(r, &fields[static_cast<size_t>(i) * kNumFields]);
             }
             arc::SampleBatch b;
             b.is_text.resize(n);
             b.keys.resize(n);
             b.texts.resize(n);
             b.grids.resize(n);
             b.logprobs.resize(n);
             bool any_aug = false;
             // Once a conversion may run Python code (__float__, tolist, __iter__), the records
             // may change under us: from then on each record is read afresh, and every object
             // viewed so far is held, so no view can outlive its str.
             bool ran_python = false;
             std::vector<py::object> pinned;
             auto pin_record = [&](Py_ssize_t j) {
               PyObject** f = &fields[static_cast<size_t>(j) * kNumFields];
               for (int k = 0; k < kNumFields; ++k) {
                 if (f[k]) pinned.push_back(py::reinterpret_borrow<py::object>(f[k]));
               }
             };
             auto before_python = [&](Py_ssize_t i) {
               if (ran_python) return;
               for (Py_ssize_t j = 0; j <= i; ++j) pin_record(j);
               ran_python = true;
             };
             b.aug_offsets.reserve(n + 1);
             b.aug_offsets.push_back(0);
             for (Py_ssize_t i = 0; i < n; ++i) {
               if (i + kAhead < n) {
                 PyObject** ahead = &fields[static_cast<size_t>(i + kAhead) * kNumFields];
                 for (int f = 0; f < kNumFields; ++f) prefetch(ahead[f]);
               }
               if (!ran_python && i + kAhead / 2 < n) {
                 // The list header arrived by now; its item array and items are next.
                 PyObject* a = fields[static_cast<size_t>(i + kAhead / 2) * kNumFields + 4];
                 if (a && PyList_CheckExact(a) && PyList_GET_SIZE(a) > 0) {
                   PyObject** it = reinterpret_cast<PyListObject*>(a)->ob_item;
                   prefetch(it);
                   prefetch(it[0]);
                   prefetch(it[PyList_GET_SIZE(a) - 1]);
                 }
               }
               PyObject** fl = &fields[static_cast<size_t>(i) * kNumFields];
               if (ran_python) {
                 // A conversion ran Python code (__float__, tolist, __iter__), which may have
                 // changed the records: read this one afresh instead of trusting pass 1.
                 if (i >= PyList_GET_SIZE(records.ptr())) {
                   throw py::value_error("records changed while being added");
                 }
                 PyObject* r = PyList_GET_ITEM(records.ptr(), i);
                 is_dict[i] = PyDict_Check(r);
                 std::fill(fl, fl + kNumFields, nullptr);
                 if (is_dict[i]) read_fields(r, fl);
                 pin_record(i);
               }
               if (!is_dict[i]) throw py::type_error(py::str("{} not a dict").format(i));
               PyObject *key = fl[0], *text = fl[1], *grid = fl[2], *lp = fl[3], *aug = fl[4];
               if (!key || !lp) throw py::key_error(py::str("{} key/logprob").format(i));
               const bool has_text = text && text != Py_None, has_grid = grid && grid != Py_None;
               if (has_text == has_grid) throw py::value_error(py::str("{} text/grid").format(i));
               if (!str_view(key, &b.keys[i])) throw py::type_error(py::str("{} key").format(i));
               if (PyFloat_CheckExact(lp)) {
                 b.logprobs[i] = PyFloat_AS_DOUBLE(lp);
               } else {
                 before_python(i);
                 b.logprobs[i] = PyFloat_AsDouble(lp);
               }
               if (b.logprobs[i] == -1.0 && PyErr_Occurred()) {
                 PyErr_Clear();
                 throw py::type_error(py::str("{} logprob").format(i));
               }
               b.is_text[i] = has_text;
               if (has_text) {
                 if (!str_view(text, &b.texts[i])) {
                   throw py::type_error(py::str("{} text").format(i));
                 }
               } else {
                 before_python(i);  // rows may be any sequence, read through Python
                 b.grids[i] = grid_from_py(grid);
               }
               if (aug && aug != Py_None) {
                 if (!PyList_CheckExact(aug) && !PyTuple_CheckExact(aug)) before_python(i);
                 PyObject* vals = PySequence_Fast(aug, "");
                 if (!vals) {
                   PyErr_Clear();
                   throw py::type_error(py::str("{} aug_logprobs").format(i));
                 }
                 const Py_ssize_t m = PySequence_Fast_GET_SIZE(vals);
                 if (b.aug_values.capacity() == 0) b.aug_values.reserve(static_cast<size_t>(m) * n);
                 // The live size: a __float__ may shrink the list while it is read.
                 for (Py_ssize_t j = 0; j < PySequence_Fast_GET_SIZE(vals); ++j) {
                   PyObject* item = PySequence_Fast_GET_ITEM(vals, j);
                   double v;
                   if (PyFloat_CheckExact(item)) {
                     v = PyFloat_AS_DOUBLE(item);
                   } else {
                     before_python(i);
                     v = PyFloat_AsDouble(item);
                   }
                   if (v == -1.0 && PyErr_Occurred()) {
                     PyErr_Clear();
                     Py_DECREF(vals);
                     throw py::type_error(py::str("{} aug_logprobs").format(i));
                   }
                   b.aug_values.push_back(v);
                 }
                 Py_DECREF(vals);
                 any_aug = any_aug || b.aug_values.size() > static_cast<size_t>(b.aug_offsets.back());
               }
               b.aug_offsets.push_back(static_cast<int64_t>(b.aug_values.size()));
             }
             if (!any_aug) b.aug_offsets.clear();
             return d.add(b);
           })
      .def("rank", [](const arc::Decoder& d, int algo, bool cs, double b,
                      int unit) { return d.rank(make_spec(algo, cs, b), unit); })
      .def("scores",
           [](const arc::Decoder& d, int algo, bool cs, double b, int unit) {
             return arc::candidate_scores(make_spec(algo, cs, b), d.unit(unit));
           })
      .def("select_grids",
           [](const arc::Decoder& d, int algo, bool cs, double b, py::list cache,
              py::list keys) {
             // {unit key: [grid lists]}; `keys` holds the unit keys as strs and `cache` (both
             // owned by the Python Decoder) memoises each candidate's list form across
             // algorithms: cache[unit][candidate], None until first asked for. Candidates are
             // only ever appended, so an entry never goes stale.
             const arc::AlgoSpec spec = make_spec(algo, cs, b);
             if (PyList_GET_SIZE(keys.ptr()) != d.n_units()) {
               throw arc::ArcError(ErrorKind::kInvalidInput, "one key per unit");
             }
             while (PyList_GET_SIZE(cache.ptr()) < d.n_units()) cache.append(py::none());
             py::dict out;
             for (int u = 0; u < d.n_units(); ++u) {
               const std::vector<int32_t> r = d.rank(spec, u);
               const size_t k = std::min(r.size(), static_cast<size_t>(d.n_guesses()));
               const auto& cands = d.unit(u).cands;
               PyObject* memo = PyList_GET_ITEM(cache.ptr(), u);
               if (k > 0 && (memo == Py_None ||
                             PyList_GET_SIZE(memo) < static_cast<Py_ssize_t>(cands.size()))) {
                 py::list grown(cands.size());
                 const Py_ssize_t had = memo == Py_None ? 0 : PyList_GET_SIZE(memo);
                 for (size_t c = 0; c < cands.size(); ++c) {
                   PyObject* v = static_cast<Py_ssize_t>(c) < had ? PyList_GET_ITEM(memo, c)
                                                                   : Py_None;
                   Py_INCREF(v);
                   PyList_SET_ITEM(grown.ptr(), c, v);
                 }
                 PyList_SetItem(cache.ptr(), u, grown.release().ptr());  // steals
                 memo = PyList_GET_ITEM(cache.ptr(), u);
               }
               PyObject* grids = PyList_New(static_cast<Py_ssize_t>(k));
               if (!grids) throw py::error_already_set();
               py::object grids_owner = py::reinterpret_steal<py::object>(grids);
               for (size_t j = 0; j < k; ++j) {
                 PyObject* g = PyList_GET_ITEM(memo, r[j]);
                 if (g == Py_None) {
                   g = grid_to_py(cands[r[j]].grid).release().ptr();
                   PyList_SetItem(memo, r[j], g);  // steals the new reference
                 }
                 Py_INCREF(g);
                 PyList_SET_ITEM(grids, j, g);
               }
               if (PyDict_SetItem(out.ptr(), PyList_GET_ITEM(keys.ptr(), u), grids) < 0) {
                 throw py::error_already_set();
               }
             }
             return out;
           })
      .def("evaluate",
           [](const arc::Decoder& d, int algo, bool cs, double b) {
             const arc::AlgoStats s = d.evaluate(make_spec(algo, cs, b));
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
