#pragma once

// Augmentations of ARC tasks: the 8 dihedral transforms, colour permutations and train-example
// reordering, composed in a fixed order and named by a key suffix such as ".tp.rot1.perm0321...".
//
// Forward order: transpose (if any), then rotate counter-clockwise by rot quarter turns (numpy's
// rot90), then recolour each cell c to perm[c]. The inverse undoes them in reverse order. The
// example order only permutes train pairs and never touches a grid.

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "arc/grid.h"

namespace nbdist::arc {

struct Transform {
  bool transpose = false;
  int rot = 0;                          // counter-clockwise quarter turns, 0..3
  bool has_perm = false;                // false: colours unchanged
  std::array<uint8_t, kNumColours> perm{};  // colour c becomes perm[c]
  std::vector<int> example_order;       // empty: train pairs in their original order

  bool is_identity() const;
  std::array<uint8_t, kNumColours> inverse_perm() const;
};

// The dihedral index 0..7 (rot + 4 * transpose) and back.
int dihedral_index(const Transform& t);
Transform dihedral(int index);

// Parses the augmentation suffix of a key ("" or ".tp.rot1.perm0123456789.ex2-0-1"); each part at
// most once. Throws ArcError (invalid input) naming the part that is wrong.
Transform parse_suffix(std::string_view suffix);
// The canonical suffix (parts in the order tp, rot, perm, ex; identity parts left out).
std::string format_suffix(const Transform& t);

Grid apply(const Transform& t, const Grid& g);
Grid invert(const Transform& t, const Grid& g);
// invert() into a caller-owned grid whose buffer is reused (no allocation once it is big enough).
void invert_into(const Transform& t, const Grid& g, Grid* out);
// invert_into for a grid whose cells are all 0..9, given t's inverse colour map (10 entries, or
// nullptr when t has none): moves and recolours in one pass (the decoder's hot path).
void invert_valid_into(const Transform& t, const uint8_t* inverse_perm, const Grid& g,
                       Grid* out);

// Per-cell score arrays of shape (h, w, channels), row-major. channels == 10 means one score per
// colour, and the colour permutation then permutes the channels; channels == 1 moves cells only.
std::vector<double> apply_scores(const Transform& t, const std::vector<double>& s, int h, int w,
                                int channels, int* out_h, int* out_w);
std::vector<double> invert_scores(const Transform& t, const std::vector<double>& s, int h, int w,
                                 int channels, int* out_h, int* out_w);

}  // namespace nbdist::arc
