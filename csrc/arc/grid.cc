#include "arc/grid.h"

#include <cstring>

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
  // Four independent multiply lanes over 32 cells per step, so the multiplies overlap instead of
  // forming one serial chain: hashing runs once per sample and must stay cheaper than decoding.
  constexpr uint64_t kMul = 0x9e3779b97f4a7c15ULL;
  uint64_t lane[4] = {0x243f6a8885a308d3ULL, 0x13198a2e03707344ULL, 0xa4093822299f31d0ULL,
                      0x082efa98ec4e6c89ULL};
  const size_t n = g.cells.size();
  const uint8_t* p = g.cells.data();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    for (int k = 0; k < 4; ++k) {
      uint64_t v;
      std::memcpy(&v, p + i + 8 * k, 8);
      lane[k] = (lane[k] ^ v) * kMul;
    }
  }
  for (int k = 0; i < n; ++k) {
    uint64_t v = 0;
    const size_t take = n - i < 8 ? n - i : 8;
    std::memcpy(&v, p + i, take);
    lane[k & 3] = (lane[k & 3] ^ v) * kMul;
    i += take;
  }
  uint64_t h = (static_cast<uint64_t>(g.h) << 40) ^ (static_cast<uint64_t>(g.w) << 32) ^ n;
  for (uint64_t l : lane) {
    h = (h ^ (l >> 29) ^ l) * kMul;
  }
  return h ^ (h >> 32);
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
