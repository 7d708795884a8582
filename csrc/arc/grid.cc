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
  // Eight cells per step (a multiply-xorshift mix): hashing runs once per sample, and
  // byte-at-a-time FNV costs as much as decoding and de-augmenting together.
  auto mix = [](uint64_t h, uint64_t v) {
    h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    h *= 0xff51afd7ed558ccdULL;
    return h ^ (h >> 33);
  };
  uint64_t h = mix(0x84222325cbf29ce4ULL, (static_cast<uint64_t>(g.h) << 8) | g.w);
  const size_t n = g.cells.size();
  const uint8_t* p = g.cells.data();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v;
    std::memcpy(&v, p + i, 8);
    h = mix(h, v);
  }
  uint64_t tail = 0;
  for (size_t k = 0; i + k < n; ++k) tail |= static_cast<uint64_t>(p[i + k]) << (8 * k);
  return mix(h, tail ^ (static_cast<uint64_t>(n - i) << 60));
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
