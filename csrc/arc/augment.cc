#include "arc/augment.h"

#include <algorithm>
#include <cstdlib>

namespace nbdist::arc {

namespace {

// Moves cells (each `channels` values wide) so that the array of shape (h, w) becomes
// rot90(transpose?(a), rot) when forward, or the inverse of that when not.
template <class T>
std::vector<T> move_cells(const std::vector<T>& in, int h, int w, int channels, bool transpose,
                          int rot, bool forward, int* out_h, int* out_w) {
  // Build the composite as a map from output (r, c) to input (r, c): compose the primitive
  // steps on index space instead of materialising each intermediate array.
  struct Step {
    bool is_transpose;
  };
  std::vector<Step> steps;
  if (forward) {
    if (transpose) steps.push_back({true});
    for (int i = 0; i < rot; ++i) steps.push_back({false});
  } else {
    // rot90 inverse is three more quarter turns; transpose is its own inverse.
    for (int i = 0; i < (4 - rot) % 4; ++i) steps.push_back({false});
    if (transpose) steps.push_back({true});
  }
  // Shapes after each step.
  std::vector<std::pair<int, int>> shapes{{h, w}};
  for (size_t i = 0; i < steps.size(); ++i) shapes.push_back({shapes.back().second, shapes.back().first});
  const int oh = shapes.back().first, ow = shapes.back().second;
  std::vector<T> out(static_cast<size_t>(oh) * ow * channels);
  for (int r = 0; r < oh; ++r) {
    for (int c = 0; c < ow; ++c) {
      int rr = r, cc = c;
      // Walk the steps backwards: each maps an output index of the step to its input index.
      for (size_t i = steps.size(); i-- > 0;) {
        const int in_w = shapes[i].second;
        if (steps[i].is_transpose) {
          std::swap(rr, cc);
        } else {
          // np.rot90 (counter-clockwise): out[i][j] = in[j][in_w - 1 - i].
          int nr = cc, nc = in_w - 1 - rr;
          rr = nr;
          cc = nc;
        }
      }
      const T* src = &in[(static_cast<size_t>(rr) * w + cc) * channels];
      std::copy(src, src + channels, &out[(static_cast<size_t>(r) * ow + c) * channels]);
    }
  }
  *out_h = oh;
  *out_w = ow;
  return out;
}

[[noreturn]] void bad_suffix(const std::string& suffix, const std::string& why) {
  throw ArcError(ErrorKind::kInvalidInput,
                 "augmentation suffix '" + suffix + "': " + why);
}

bool all_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
}

}  // namespace

bool Transform::is_identity() const {
  if (transpose || rot != 0 || !example_order.empty()) return false;
  if (!has_perm) return true;
  for (int c = 0; c < kNumColours; ++c) {
    if (perm[c] != c) return false;
  }
  return true;
}

std::array<uint8_t, kNumColours> Transform::inverse_perm() const {
  std::array<uint8_t, kNumColours> inv{};
  for (int c = 0; c < kNumColours; ++c) inv[perm[c]] = static_cast<uint8_t>(c);
  return inv;
}

int dihedral_index(const Transform& t) { return t.rot + (t.transpose ? 4 : 0); }

Transform dihedral(int index) {
  if (index < 0 || index > 7) {
    throw ArcError(ErrorKind::kInvalidInput,
                   "dihedral index must be 0..7, got " + std::to_string(index));
  }
  Transform t;
  t.transpose = index >= 4;
  t.rot = index % 4;
  return t;
}

Transform parse_suffix(const std::string& suffix) {
  Transform t;
  if (suffix.empty()) return t;
  if (suffix[0] != '.') bad_suffix(suffix, "must start with '.'");
  bool seen_tp = false, seen_rot = false, seen_perm = false, seen_ex = false;
  size_t pos = 1;
  while (pos <= suffix.size()) {
    size_t end = suffix.find('.', pos);
    if (end == std::string::npos) end = suffix.size();
    const std::string part = suffix.substr(pos, end - pos);
    if (part == "tp") {
      if (seen_tp) bad_suffix(suffix, "'tp' appears twice");
      seen_tp = true;
      t.transpose = true;
    } else if (part.size() == 4 && part.compare(0, 3, "rot") == 0 && part[3] >= '0' &&
               part[3] <= '3') {
      if (seen_rot) bad_suffix(suffix, "'rot' appears twice");
      seen_rot = true;
      t.rot = part[3] - '0';
    } else if (part.compare(0, 4, "perm") == 0) {
      if (seen_perm) bad_suffix(suffix, "'perm' appears twice");
      seen_perm = true;
      const std::string digits = part.substr(4);
      if (digits.size() != kNumColours || !all_digits(digits)) {
        bad_suffix(suffix, "'" + part + "' must be 'perm' followed by 10 digits");
      }
      std::array<bool, kNumColours> used{};
      for (int c = 0; c < kNumColours; ++c) {
        int to = digits[c] - '0';
        if (used[to]) bad_suffix(suffix, "'" + part + "' is not a permutation of 0..9");
        used[to] = true;
        t.perm[c] = static_cast<uint8_t>(to);
      }
      t.has_perm = true;
    } else if (part.compare(0, 2, "ex") == 0) {
      if (seen_ex) bad_suffix(suffix, "'ex' appears twice");
      seen_ex = true;
      const std::string body = part.substr(2);
      size_t p = 0;
      while (p <= body.size()) {
        size_t q = body.find('-', p);
        if (q == std::string::npos) q = body.size();
        const std::string num = body.substr(p, q - p);
        if (!all_digits(num) || num.size() > 4) {
          bad_suffix(suffix, "'" + part + "' must be 'ex' followed by indices joined by '-'");
        }
        t.example_order.push_back(std::atoi(num.c_str()));
        p = q + 1;
      }
      std::vector<int> sorted = t.example_order;
      std::sort(sorted.begin(), sorted.end());
      for (size_t i = 0; i < sorted.size(); ++i) {
        if (sorted[i] != static_cast<int>(i)) {
          bad_suffix(suffix, "'" + part + "' is not a permutation of 0.." +
                                 std::to_string(sorted.size() - 1));
        }
      }
    } else {
      bad_suffix(suffix, "unknown part '" + part + "' (expected tp, rot0..rot3, perm, ex)");
    }
    pos = end + 1;
  }
  return t;
}

std::string format_suffix(const Transform& t) {
  std::string s;
  if (t.transpose) s += ".tp";
  if (t.rot != 0) s += ".rot" + std::to_string(t.rot);
  if (t.has_perm) {
    s += ".perm";
    for (int c = 0; c < kNumColours; ++c) s += static_cast<char>('0' + t.perm[c]);
  }
  if (!t.example_order.empty()) {
    s += ".ex";
    for (size_t i = 0; i < t.example_order.size(); ++i) {
      if (i) s += '-';
      s += std::to_string(t.example_order[i]);
    }
  }
  return s;
}

Grid apply(const Transform& t, const Grid& g) {
  Grid out;
  out.cells = move_cells(g.cells, g.h, g.w, 1, t.transpose, t.rot, true, &out.h, &out.w);
  if (t.has_perm) {
    for (auto& c : out.cells) c = c < kNumColours ? t.perm[c] : c;
  }
  return out;
}

Grid invert(const Transform& t, const Grid& g) {
  Grid out;
  out.cells = move_cells(g.cells, g.h, g.w, 1, t.transpose, t.rot, false, &out.h, &out.w);
  if (t.has_perm) {
    const auto inv = t.inverse_perm();
    for (auto& c : out.cells) c = c < kNumColours ? inv[c] : c;
  }
  return out;
}

namespace {

std::vector<double> permute_channels(std::vector<double> s, const std::array<uint8_t, kNumColours>& to) {
  // Channel c moves to channel to[c], cell by cell.
  std::array<double, kNumColours> tmp{};
  for (size_t base = 0; base < s.size(); base += kNumColours) {
    for (int c = 0; c < kNumColours; ++c) tmp[to[c]] = s[base + c];
    std::copy(tmp.begin(), tmp.end(), s.begin() + base);
  }
  return s;
}

void check_scores(const std::vector<double>& s, int h, int w, int channels) {
  if (channels != 1 && channels != kNumColours) {
    throw ArcError(ErrorKind::kInvalidInput,
                   "score arrays need 1 or 10 channels per cell, got " + std::to_string(channels));
  }
  if (h < 1 || w < 1 || s.size() != static_cast<size_t>(h) * w * channels) {
    throw ArcError(ErrorKind::kInvalidInput, "score array size does not match its shape");
  }
}

}  // namespace

std::vector<double> apply_scores(const Transform& t, const std::vector<double>& s, int h, int w,
                                int channels, int* out_h, int* out_w) {
  check_scores(s, h, w, channels);
  auto out = move_cells(s, h, w, channels, t.transpose, t.rot, true, out_h, out_w);
  if (t.has_perm && channels == kNumColours) out = permute_channels(std::move(out), t.perm);
  return out;
}

std::vector<double> invert_scores(const Transform& t, const std::vector<double>& s, int h, int w,
                                 int channels, int* out_h, int* out_w) {
  check_scores(s, h, w, channels);
  auto out = move_cells(s, h, w, channels, t.transpose, t.rot, false, out_h, out_w);
  if (t.has_perm && channels == kNumColours) out = permute_channels(std::move(out), t.inverse_perm());
  return out;
}

}  // namespace nbdist::arc
