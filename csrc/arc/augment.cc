#include "arc/augment.h"

#include <algorithm>
#include <cstdlib>
#include <type_traits>

namespace nbdist::arc {

namespace {

// Moves cells (each `channels` values wide) so that the array of shape (h, w) becomes
// rot90(transpose?(a), rot) when forward, or the inverse of that when not.
// Output index (r, c) -> input index: rr = a*r + b*c + e, cc = f*r + g*c + k. Each dihedral
// step is such an affine map, so the whole composite is one, computed before touching any cell.
struct IndexMap {
  int a = 1, b = 0, e = 0, f = 0, g = 1, k = 0;
};

template <class T>
void move_cells_into(const std::vector<T>& in, int h, int w, int channels, bool transpose,
                     int rot, bool forward, std::vector<T>* out, int* out_h, int* out_w,
                     const uint8_t* recolour = nullptr) {
  // Primitive steps in application order: true = transpose, false = rot90 counter-clockwise.
  bool steps[5];
  int n_steps = 0;
  if (forward) {
    if (transpose) steps[n_steps++] = true;
    for (int i = 0; i < rot; ++i) steps[n_steps++] = false;
  } else {
    // The inverse of rot90^k is rot90^(4-k); transpose is its own inverse.
    for (int i = 0; i < (4 - rot) % 4; ++i) steps[n_steps++] = false;
    if (transpose) steps[n_steps++] = true;
  }
  int in_w[5];  // width of each step's input
  int sh = h, sw = w;
  for (int i = 0; i < n_steps; ++i) {
    in_w[i] = sw;
    std::swap(sh, sw);
  }
  // Walk the steps backwards, composing each step's output->input map onto the running map.
  IndexMap m;
  for (int i = n_steps; i-- > 0;) {
    IndexMap n;
    if (steps[i]) {  // (r, c) <- (c, r)
      n = {m.f, m.g, m.k, m.a, m.b, m.e};
    } else {  // np.rot90: out[i][j] = in[j][in_w - 1 - i]
      n = {m.f, m.g, m.k, -m.a, -m.b, in_w[i] - 1 - m.e};
    }
    m = n;
  }
  out->resize(static_cast<size_t>(sh) * sw * channels);
  T* dst = out->data();
  // Input cell index = rr * w + cc is affine in (r, c) too: walk it with two strides.
  const ptrdiff_t row_step = static_cast<ptrdiff_t>(m.a) * w + m.f;
  const ptrdiff_t col_step = static_cast<ptrdiff_t>(m.b) * w + m.g;
  const ptrdiff_t origin = static_cast<ptrdiff_t>(m.e) * w + m.k;
  // A local base pointer: byte stores through dst may alias the vector's own pointer, which
  // would otherwise be reloaded on every cell.
  const T* base = in.data();
  for (int r = 0; r < sh; ++r) {
    ptrdiff_t src = origin + row_step * r;
    if constexpr (std::is_same_v<T, uint8_t>) {
      if (recolour != nullptr) {
        // Grids: the colour map rides along with the move, no second pass.
        for (int c = 0; c < sw; ++c, src += col_step) *dst++ = recolour[base[src]];
        continue;
      }
    }
    if (channels == 1) {
      for (int c = 0; c < sw; ++c, src += col_step) *dst++ = base[src];
    } else {
      for (int c = 0; c < sw; ++c, src += col_step) {
        for (int ch = 0; ch < channels; ++ch) *dst++ = base[src * channels + ch];
      }
    }
  }
  *out_h = sh;
  *out_w = sw;
}

template <class T>
std::vector<T> move_cells(const std::vector<T>& in, int h, int w, int channels, bool transpose,
                          int rot, bool forward, int* out_h, int* out_w) {
  std::vector<T> out;
  move_cells_into(in, h, w, channels, transpose, rot, forward, &out, out_h, out_w);
  return out;
}

[[noreturn]] void bad_suffix(std::string_view suffix, const std::string& why) {
  throw ArcError(ErrorKind::kInvalidInput,
                 "augmentation suffix '" + std::string(suffix) + "': " + why);
}

bool all_digits(std::string_view s) {
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

Transform parse_suffix(std::string_view suffix) {
  // string_view throughout: a decoder parses one suffix per distinct sample key.
  Transform t;
  if (suffix.empty()) return t;
  if (suffix[0] != '.') bad_suffix(suffix, "must start with '.'");
  bool seen_tp = false, seen_rot = false, seen_perm = false, seen_ex = false;
  size_t pos = 1;
  while (pos <= suffix.size()) {
    size_t end = suffix.find('.', pos);
    if (end == std::string_view::npos) end = suffix.size();
    const std::string_view part = suffix.substr(pos, end - pos);
    auto quoted = [part] { return "'" + std::string(part) + "'"; };  // only for errors
    if (part == "tp") {
      if (seen_tp) bad_suffix(suffix, "'tp' appears twice");
      seen_tp = true;
      t.transpose = true;
    } else if (part.size() == 4 && part.substr(0, 3) == "rot" && part[3] >= '0' &&
               part[3] <= '3') {
      if (seen_rot) bad_suffix(suffix, "'rot' appears twice");
      seen_rot = true;
      t.rot = part[3] - '0';
    } else if (part.substr(0, 4) == "perm") {
      if (seen_perm) bad_suffix(suffix, "'perm' appears twice");
      seen_perm = true;
      const std::string_view digits = part.substr(4);
      if (digits.size() != kNumColours || !all_digits(digits)) {
        bad_suffix(suffix, quoted() + " must be 'perm' followed by 10 digits");
      }
      std::array<bool, kNumColours> used{};
      for (int c = 0; c < kNumColours; ++c) {
        const int to = digits[c] - '0';
        if (used[to]) bad_suffix(suffix, quoted() + " is not a permutation of 0..9");
        used[to] = true;
        t.perm[c] = static_cast<uint8_t>(to);
      }
      t.has_perm = true;
    } else if (part.substr(0, 2) == "ex") {
      if (seen_ex) bad_suffix(suffix, "'ex' appears twice");
      seen_ex = true;
      const std::string_view body = part.substr(2);
      size_t p = 0;
      while (p <= body.size()) {
        size_t q = body.find('-', p);
        if (q == std::string_view::npos) q = body.size();
        const std::string_view num = body.substr(p, q - p);
        if (!all_digits(num) || num.size() > 4) {
          bad_suffix(suffix, quoted() + " must be 'ex' followed by indices joined by '-'");
        }
        int v = 0;
        for (char ch : num) v = v * 10 + (ch - '0');
        t.example_order.push_back(v);
        p = q + 1;
      }
      std::vector<int> sorted = t.example_order;
      std::sort(sorted.begin(), sorted.end());
      for (size_t k = 0; k < sorted.size(); ++k) {
        if (sorted[k] != static_cast<int>(k)) {
          bad_suffix(suffix, quoted() + " is not a permutation of 0.." +
                                 std::to_string(sorted.size() - 1));
        }
      }
    } else {
      bad_suffix(suffix, "unknown part " + quoted() + " (expected tp, rot0..rot3, perm, ex)");
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
  invert_into(t, g, &out);
  return out;
}

void invert_into(const Transform& t, const Grid& g, Grid* out) {
  if (t.transpose || t.rot != 0) {
    move_cells_into(g.cells, g.h, g.w, 1, t.transpose, t.rot, false, &out->cells, &out->h,
                    &out->w);
  } else {
    *out = g;
  }
  if (t.has_perm) {
    const auto inv = t.inverse_perm();
    for (auto& c : out->cells) c = c < kNumColours ? inv[c] : c;
  }
}

void invert_valid_into(const Transform& t, const uint8_t* inverse_perm, const Grid& g,
                       Grid* out) {
  if (t.transpose || t.rot != 0) {
    move_cells_into(g.cells, g.h, g.w, 1, t.transpose, t.rot, false, &out->cells, &out->h,
                    &out->w, inverse_perm);
    return;
  }
  *out = g;
  if (inverse_perm != nullptr) {
    for (auto& c : out->cells) c = inverse_perm[c];
  }
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
