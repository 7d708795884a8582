#include "arc/grid.h"

namespace nbdist::arc {

bool is_valid_grid(const Grid& g) {
  if (g.h < 1 || g.h > kMaxSide || g.w < 1 || g.w > kMaxSide) return false;
  if (g.cells.size() != static_cast<size_t>(g.h) * g.w) return false;
  for (uint8_t c : g.cells) {
    if (c >= kNumColours) return false;
  }
  return true;
}

uint64_t grid_hash(const Grid& g) {
  uint64_t h = 1469598103934665603ULL;
  auto mix = [&h](uint64_t byte) {
    h ^= byte;
    h *= 1099511628211ULL;
  };
  mix(static_cast<uint64_t>(g.h));
  mix(static_cast<uint64_t>(g.w));
  for (uint8_t c : g.cells) mix(c);
  return h;
}

std::vector<Grid> unpack_grids(const uint8_t* data, size_t size, const std::vector<int32_t>& shapes) {
  if (shapes.size() % 2 != 0) {
    throw ArcError(ErrorKind::kInvalidInput, "grid shapes must come in (height, width) pairs");
  }
  std::vector<Grid> out(shapes.size() / 2);
  size_t pos = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    int h = shapes[2 * i], w = shapes[2 * i + 1];
    if (h < 0 || w < 0) {
      throw ArcError(ErrorKind::kInvalidInput,
                     "grid " + std::to_string(i) + " has a negative shape");
    }
    size_t n = static_cast<size_t>(h) * w;
    if (pos + n > size) {
      throw ArcError(ErrorKind::kInvalidInput, "grid buffer holds " + std::to_string(size) +
                                                   " cells, the shapes need more (grid " +
                                                   std::to_string(i) + ")");
    }
    out[i].h = h;
    out[i].w = w;
    out[i].cells.assign(data + pos, data + pos + n);
    pos += n;
  }
  if (pos != size) {
    throw ArcError(ErrorKind::kInvalidInput, "grid buffer holds " + std::to_string(size) +
                                                 " cells, the shapes account for " +
                                                 std::to_string(pos));
  }
  return out;
}

}  // namespace nbdist::arc
