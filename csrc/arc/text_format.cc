#include "arc/text_format.h"

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

DecodeStatus decode_into(const TextFormat& fmt, std::string_view text, Grid* out) {
  if (!fmt.end_marker.empty()) {
    size_t cut = text.find(fmt.end_marker);
    if (cut != std::string_view::npos) text = text.substr(0, cut);
  }
  int8_t lut[256];
  for (auto& v : lut) v = -1;
  for (int c = 0; c < kNumColours; ++c) lut[static_cast<unsigned char>(fmt.alphabet[c])] = static_cast<int8_t>(c);

  out->h = 0;
  out->w = 0;
  out->cells.clear();
  if (text.empty()) return DecodeStatus::kEmpty;
  const std::string_view row_end = fmt.row_end;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find(row_end, pos);
    if (end == std::string_view::npos) return DecodeStatus::kUnterminatedRow;
    const size_t width = end - pos;
    if (width == 0) return DecodeStatus::kEmpty;
    if (width > static_cast<size_t>(kMaxSide) || out->h >= kMaxSide) return DecodeStatus::kTooLarge;
    if (out->h > 0 && static_cast<int>(width) != out->w) return DecodeStatus::kRagged;
    out->w = static_cast<int>(width);
    for (size_t i = pos; i < end; ++i) {
      int8_t v = lut[static_cast<unsigned char>(text[i])];
      if (v < 0) return DecodeStatus::kBadSymbol;
      out->cells.push_back(static_cast<uint8_t>(v));
    }
    ++out->h;
    pos = end + row_end.size();
  }
  return DecodeStatus::kOk;
}

}  // namespace

DecodeStatus decode_text(const TextFormat& fmt, std::string_view text, Grid* out) {
  const DecodeStatus st = decode_into(fmt, text, out);
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
