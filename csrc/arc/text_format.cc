#include "arc/text_format.h"

#include <cstring>

namespace nbdist::arc {

const char* decode_status_name(DecodeStatus s) {
  switch (s) {
    case DecodeStatus::kOk:
      return "ok";
    case DecodeStatus::kEmpty:
      return "empty";
    case DecodeStatus::kBadSymbol:
      return "bad_symbol";
    case DecodeStatus::kRagged:
      return "ragged";
    case DecodeStatus::kTooLarge:
      return "too_large";
    case DecodeStatus::kUnterminatedRow:
      return "unterminated_row";
  }
  return "unknown";
}

namespace {

DecodeStatus decode_into(const TextFormat& fmt, std::string_view text, Grid* out,
                         const uint8_t* recolour) {
  const std::string_view row_end = fmt.row_end;
  // One-byte row ends and end markers (the usual case) are found by the single decoding pass;
  // anything longer is cut out first.
  const bool one_pass = row_end.size() == 1 && fmt.end_marker.size() <= 1;
  if (!one_pass && !fmt.end_marker.empty()) {
    size_t cut = text.find(fmt.end_marker);
    if (cut != std::string_view::npos) text = text.substr(0, cut);
  }
  int8_t lut[256];
  std::memset(lut, -1, sizeof(lut));
  for (int c = 0; c < kNumColours; ++c) {
    lut[static_cast<unsigned char>(fmt.alphabet[c])] =
        static_cast<int8_t>(recolour ? recolour[c] : c);
  }

  out->h = 0;
  out->w = 0;
  if (text.empty()) return DecodeStatus::kEmpty;
  out->cells.resize(text.size());  // an upper bound on the cell count; trimmed at the end
  uint8_t* dst = out->cells.data();
  if (one_pass) {
    // Every byte is a cell, a row end, the end marker (stop) or an error.
    constexpr int8_t kRowEnd = 64, kEnd = 65;
    if (!fmt.end_marker.empty()) lut[static_cast<unsigned char>(fmt.end_marker[0])] = kEnd;
    lut[static_cast<unsigned char>(row_end[0])] = kRowEnd;
    int width = 0;
    const char* p = text.data();
    const size_t n = text.size();
    for (size_t i = 0; i < n;) {
      if (width == 0 && out->h > 0 && i + out->w < n) {
        // Rows after the first have a known width: copy one without a branch per cell and
        // accept it only if it is all cells followed by the row end; otherwise fall through to
        // the byte-by-byte path below, which finds the exact reason.
        const int w = out->w;
        uint8_t bad = 0;
        for (int k = 0; k < w; ++k) {
          const uint8_t v = static_cast<uint8_t>(lut[static_cast<unsigned char>(p[i + k])]);
          bad |= static_cast<uint8_t>(v >= kNumColours);
          dst[k] = v;
        }
        if (!bad && p[i + w] == row_end[0]) {
          if (out->h >= kMaxSide) return DecodeStatus::kTooLarge;
          dst += w;
          i += w + 1;
          ++out->h;
          continue;
        }
      }
      const int8_t v = lut[static_cast<unsigned char>(p[i++])];
      if (v >= 0 && v < kNumColours) {
        *dst++ = static_cast<uint8_t>(v);
        ++width;
        continue;
      }
      if (v == kEnd) break;
      if (v != kRowEnd) return DecodeStatus::kBadSymbol;
      if (width == 0) return DecodeStatus::kEmpty;
      if (width > kMaxSide || out->h >= kMaxSide) return DecodeStatus::kTooLarge;
      if (out->h > 0 && width != out->w) return DecodeStatus::kRagged;
      out->w = width;
      width = 0;
      ++out->h;
    }
    if (width != 0) return DecodeStatus::kUnterminatedRow;
    if (out->h == 0) return DecodeStatus::kEmpty;
    out->cells.resize(static_cast<size_t>(out->h) * out->w);
    return DecodeStatus::kOk;
  }
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t end = text.find(row_end, pos);
    if (end == std::string_view::npos) return DecodeStatus::kUnterminatedRow;
    const size_t width = end - pos;
    if (width == 0) return DecodeStatus::kEmpty;
    if (width > static_cast<size_t>(kMaxSide) || out->h >= kMaxSide) return DecodeStatus::kTooLarge;
    if (out->h > 0 && static_cast<int>(width) != out->w) return DecodeStatus::kRagged;
    out->w = static_cast<int>(width);
    int8_t bad = 0;
    for (size_t i = pos; i < end; ++i) {
      const int8_t v = lut[static_cast<unsigned char>(text[i])];
      bad |= v;  // any -1 sets the sign bit
      *dst++ = static_cast<uint8_t>(v);
    }
    if (bad < 0) return DecodeStatus::kBadSymbol;
    ++out->h;
    pos = end + row_end.size();
  }
  out->cells.resize(static_cast<size_t>(out->h) * out->w);
  return DecodeStatus::kOk;
}

}  // namespace

DecodeStatus decode_text(const TextFormat& fmt, std::string_view text, Grid* out,
                         const uint8_t* recolour) {
  const DecodeStatus st = decode_into(fmt, text, out, recolour);
  if (st != DecodeStatus::kOk) {
    // A rejected text leaves an empty grid, never a half-filled one.
    out->h = 0;
    out->w = 0;
    out->cells.clear();
  }
  return st;
}

std::string encode_grid(const TextFormat& fmt, const Grid& g) {
  std::string s;
  s.reserve(static_cast<size_t>(g.h) * (g.w + fmt.row_end.size()) + fmt.end_marker.size());
  for (int r = 0; r < g.h; ++r) {
    for (int c = 0; c < g.w; ++c) s += fmt.alphabet[g.at(r, c)];
    s += fmt.row_end;
  }
  s += fmt.end_marker;
  return s;
}

}  // namespace nbdist::arc
