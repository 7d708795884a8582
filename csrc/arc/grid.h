#pragma once

// ARC grids as compact row-major byte arrays, and the arc error class.

#include <cstdint>
#include <string>
#include <vector>

#include "common/error.h"

namespace nbdist::arc {

NBDIST_DEFINE_ERROR(ArcError, "arc");

constexpr int kMaxSide = 30;    // ARC grids are 1..30 cells on each side
constexpr int kNumColours = 10;  // cells hold colours 0..9

struct Grid {
  int h = 0;
  int w = 0;
  std::vector<uint8_t> cells;  // row-major, h * w entries

  bool operator==(const Grid& o) const { return h == o.h && w == o.w && cells == o.cells; }
  uint8_t at(int r, int c) const { return cells[static_cast<size_t>(r) * w + c]; }
};

// True when the shape is 1..30 x 1..30, the cell count matches and every cell is 0..9.
bool is_valid_grid(const Grid& g);

// FNV-1a over the shape and the cells; equal grids hash equal (grouping still compares cells).
uint64_t grid_hash(const Grid& g);

// Splits a flat byte buffer holding grids back to back into grids; shapes are (h, w) pairs.
// Throws ArcError (invalid input) when the shapes do not add up to the buffer's size.
std::vector<Grid> unpack_grids(const uint8_t* data, size_t size, const std::vector<int32_t>& shapes);

}  // namespace nbdist::arc
