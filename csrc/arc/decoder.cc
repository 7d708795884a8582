#include "arc/decoder.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <limits>
#include <string_view>

namespace nbdist::arc {

Decoder::Decoder(std::vector<std::string> unit_keys, std::vector<int32_t> unit_task,
                 int n_guesses, TextFormat fmt)
    : unit_keys_(std::move(unit_keys)),
      unit_task_(std::move(unit_task)),
      n_guesses_(n_guesses),
      fmt_(std::move(fmt)) {
  if (unit_task_.size() != unit_keys_.size()) {
    throw ArcError(ErrorKind::kInvalidInput, "unit_task must have one entry per unit key");
  }
  if (n_guesses_ < 1) {
    throw ArcError(ErrorKind::kInvalidInput,
                   "n_guesses must be at least 1, got " + std::to_string(n_guesses_));
  }
  for (size_t i = 0; i < unit_keys_.size(); ++i) {
    if (unit_keys_[i].find('.') != std::string::npos) {
      throw ArcError(ErrorKind::kInvalidInput,
                     "unit key '" + unit_keys_[i] + "' contains '.', which starts a suffix");
    }
    if (!unit_index_.emplace(unit_keys_[i], static_cast<int>(i)).second) {
      throw ArcError(ErrorKind::kInvalidInput, "unit key '" + unit_keys_[i] + "' appears twice");
    }
    if (unit_task_[i] < 0) throw ArcError(ErrorKind::kInvalidInput, "negative task index");
    n_tasks_ = std::max(n_tasks_, unit_task_[i] + 1);
  }
  units_.resize(unit_keys_.size());
  truth_.resize(unit_keys_.size());
  truth_hash_.resize(unit_keys_.size(), 0);
  truth_index_.resize(unit_keys_.size(), -1);
  table_ = make_decode_table(fmt_);
}

void Decoder::set_truth(int unit, Grid truth) {
  if (unit < 0 || unit >= n_units()) throw ArcError(ErrorKind::kInvalidInput, "unit out of range");
  truth_hash_[unit] = grid_hash(truth);
  truth_index_[unit] = units_[unit].find(truth, truth_hash_[unit]);
  truth_[unit] = std::move(truth);
}

int Decoder::add(const SampleBatch& b) {
  const size_t n = b.keys.size();
  auto where = [&b](size_t i) {
    return "record " + std::to_string(i) + " (key '" + std::string(b.keys[i]) + "')";
  };
  if (b.logprobs.size() != n || b.is_text.size() != n || b.texts.size() != n ||
      b.grids.size() != n) {
    throw ArcError(ErrorKind::kInvalidInput, "batch columns differ in length");
  }
  const bool any_aug = !b.aug_offsets.empty();
  if (any_aug && b.aug_offsets.size() != n + 1) {
    throw ArcError(ErrorKind::kInvalidInput, "aug_offsets must have one entry per record plus one");
  }
  // Validate everything first: a bad record must not leave half a batch ingested.
  std::vector<int> unit_of(n);
  std::vector<int> tf_of(n);
  std::vector<uint32_t> run_start(n);  // first sample of the run of equal keys that i is in
  // Samples of one (unit, augmentation) share their key: resolve each distinct key once.
  std::vector<Transform> tfs;
  // Open addressing over the distinct keys seen so far (no node allocation per key).
  struct Seen {
    std::string_view key;
    int unit, tf;
  };
  std::vector<Seen> seen;
  size_t cap = 16;
  while (cap < n) cap <<= 1;  // load factor <= 1/2 even when every key is distinct
  cap <<= 1;
  std::vector<int32_t> slots(cap, -1);
  const std::hash<std::string_view> hasher;
  std::string unit;
  for (size_t i = 0; i < n; ++i) {
    const std::string_view key = b.keys[i];
    if (i > 0 && key == b.keys[i - 1]) {  // samples of one prompt usually arrive together
      unit_of[i] = unit_of[i - 1];
      tf_of[i] = tf_of[i - 1];
      run_start[i] = run_start[i - 1];
    } else {
      run_start[i] = static_cast<uint32_t>(i);
      size_t slot = hasher(key) & (cap - 1);
      while (slots[slot] >= 0 && seen[slots[slot]].key != key) slot = (slot + 1) & (cap - 1);
      if (slots[slot] >= 0) {
        unit_of[i] = seen[slots[slot]].unit;
        tf_of[i] = seen[slots[slot]].tf;
      } else {
        const size_t dot = key.find('.');
        unit.assign(key.substr(0, dot));
        auto it = unit_index_.find(unit);
        if (it == unit_index_.end()) {
          throw ArcError(ErrorKind::kInvalidInput, where(i) + ": unknown unit '" + unit + "'");
        }
        unit_of[i] = it->second;
        try {
          tfs.push_back(parse_suffix(dot == std::string_view::npos ? std::string_view()
                                                                    : key.substr(dot)));
        } catch (const ArcError& e) {
          throw ArcError(ErrorKind::kInvalidInput, where(i) + ": " + e.what());
        }
        tf_of[i] = static_cast<int>(tfs.size()) - 1;
        slots[slot] = static_cast<int32_t>(seen.size());
        seen.push_back(Seen{key, unit_of[i], tf_of[i]});
      }
    }
    if (std::isnan(b.logprobs[i]) || b.logprobs[i] == std::numeric_limits<double>::infinity()) {
      throw ArcError(ErrorKind::kInvalidInput, where(i) + ": logprob must be a number below +inf");
    }
    if (any_aug) {
      const int64_t lo = b.aug_offsets[i], hi = b.aug_offsets[i + 1];
      if (lo < 0 || hi < lo || hi > static_cast<int64_t>(b.aug_values.size())) {
        throw ArcError(ErrorKind::kInvalidInput, where(i) + ": aug_offsets out of order");
      }
      for (int64_t j = lo; j < hi; ++j) {
        const double a = b.aug_values[j];
        if (std::isnan(a) || a == std::numeric_limits<double>::infinity()) {
          throw ArcError(ErrorKind::kInvalidInput,
                         where(i) + ": aug_logprobs[" + std::to_string(j - lo) +
                             "] must be a number below +inf");
        }
      }
    }
  }
  std::vector<std::array<uint8_t, kNumColours>> inv_perm(tfs.size());
  for (size_t t = 0; t < tfs.size(); ++t) {
    if (tfs[t].has_perm) inv_perm[t] = tfs[t].inverse_perm();
  }
  int invalid = 0;
  Grid g, orig;  // scratch buffers, reused across samples
  // Per text sample: its candidate index, or -DecodeStatus when it did not decode.
  std::vector<int32_t> outcome(n, 0);
  constexpr size_t kDupWindow = 8;
  for (size_t i = 0; i < n; ++i) {
    UnitCandidates& u = units_[unit_of[i]];
    const bool from_text = b.is_text[i];
    bool ok;
#if defined(__GNUC__)
    // Texts live in scattered Python objects: start fetching the next ones while decoding this.
    if (i + 2 < n && b.is_text[i + 2]) {
      const char* t = b.texts[i + 2].data();
      for (size_t off = 0; off < b.texts[i + 2].size(); off += 64) __builtin_prefetch(t + off);
    }
#endif
    const double* aug = nullptr;
    size_t n_aug = 0;
    if (any_aug && b.aug_offsets[i + 1] > b.aug_offsets[i]) {
      aug = b.aug_values.data() + b.aug_offsets[i];
      n_aug = static_cast<size_t>(b.aug_offsets[i + 1] - b.aug_offsets[i]);
    }
    if (from_text) {
      // Replies to one prompt often repeat word for word: a text equal to one of the last few
      // of its run (same key, so same unit and augmentation) takes that sample's outcome
      // without decoding, de-augmenting or hashing again.
      bool dup = false;
      for (size_t j = std::max<size_t>(run_start[i], i >= kDupWindow ? i - kDupWindow : 0); j < i;
           ++j) {
        if (!b.is_text[j] || b.texts[j] != b.texts[i]) continue;
        outcome[i] = outcome[j];
        dup = true;
        break;
      }
      if (dup) {
        ++n_samples_;
        if (outcome[i] < 0) {
          ++decode_failures_[-outcome[i]];
          u.add_invalid();
          ++invalid;
        } else {
          u.add_existing(outcome[i], b.logprobs[i], aug, n_aug);
        }
        continue;
      }
    }
    if (from_text) {
      const DecodeStatus st = decode_text(fmt_, table_, b.texts[i], &g);
      ok = st == DecodeStatus::kOk;
      if (!ok) {
        ++decode_failures_[static_cast<int>(st)];
        outcome[i] = -static_cast<int32_t>(st);
      }
    } else {
      ok = is_valid_grid(b.grids[i]);
    }
    ++n_samples_;
    if (!ok) {
      u.add_invalid();
      ++invalid;
      continue;
    }
    // One pass undoes the cell moves and the colour permutation together.
    const Transform& tf = tfs[tf_of[i]];
    const bool moves = tf.transpose || tf.rot != 0 || tf.has_perm;
    const Grid& seen_grid = from_text ? g : b.grids[i];
    if (moves) {
      invert_valid_into(tf, tf.has_perm ? inv_perm[tf_of[i]].data() : nullptr, seen_grid, &orig);
    }
    const size_t before = u.cands.size();
    const int c = u.add(moves ? orig : seen_grid, b.logprobs[i], aug, n_aug);
    outcome[i] = c;
    const int unit_i = unit_of[i];
    if (u.cands.size() != before && truth_index_[unit_i] < 0 && truth_[unit_i] &&
        u.cands[c].hash == truth_hash_[unit_i] && u.cands[c].grid == *truth_[unit_i]) {
      truth_index_[unit_i] = c;
    }
  }
  n_invalid_ += invalid;
  return invalid;
}

std::vector<int32_t> Decoder::rank(const AlgoSpec& spec, int unit) const {
  return rank_candidates(spec, units_.at(unit));
}

std::vector<std::vector<const Grid*>> Decoder::select(const AlgoSpec& spec) const {
  std::vector<std::vector<const Grid*>> out(units_.size());
  for (size_t u = 0; u < units_.size(); ++u) {
    const std::vector<int32_t> r = rank_candidates(spec, units_[u]);
    for (size_t k = 0; k < r.size() && k < static_cast<size_t>(n_guesses_); ++k) {
      out[u].push_back(&units_[u].cands[r[k]].grid);
    }
  }
  return out;
}

AlgoStats Decoder::evaluate(const AlgoSpec& spec) const {
  AlgoStats st;
  std::vector<int> task_units(n_tasks_, 0), task_solved(n_tasks_, 0), task_solved_1(n_tasks_, 0);
  for (size_t u = 0; u < units_.size(); ++u) {
    if (!truth_[u]) continue;
    const int task = unit_task_[u];
    ++task_units[task];
    ++st.n_units;
    const int t = truth_index(static_cast<int>(u));
    if (t < 0) continue;
    ++st.n_oracle;
    const std::vector<int32_t> r = rank_candidates(spec, units_[u]);
    for (size_t k = 0; k < r.size(); ++k) {
      if (r[k] != t) continue;
      ++st.n_ranked;
      st.rank_sum += static_cast<double>(k + 1);
      if (k < static_cast<size_t>(n_guesses_)) ++task_solved[task];
      if (k == 0) ++task_solved_1[task];
      break;
    }
  }
  for (int k = 0; k < n_tasks_; ++k) {
    if (task_units[k] == 0) continue;
    ++st.n_tasks;
    st.score += static_cast<double>(task_solved[k]) / task_units[k];
    st.score_1 += static_cast<double>(task_solved_1[k]) / task_units[k];
  }
  return st;
}

}  // namespace nbdist::arc
