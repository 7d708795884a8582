#include "arc/text_format.h"

#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

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

constexpr int8_t kRowEnd = 64, kEnd = 65;

// Checks that the w (<= 32) bytes at p are all alphabet symbols and stores their colours at dst
// (32 bytes are written; the caller has room). Needs 32 readable bytes at p.
inline bool row_of_cells(const char* p, int w, uint8_t first, uint8_t* dst) {
#if defined(__SSE2__)
  const __m128i base = _mm_set1_epi8(static_cast<char>(first));
  const __m128i nine = _mm_set1_epi8(9);
  const __m128i zero = _mm_setzero_si128();
  const __m128i v0 = _mm_sub_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), base);
  const __m128i v1 =
      _mm_sub_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)), base);
  // A byte is a colour when (byte - first), unsigned, is at most 9.
  const uint32_t ok0 = static_cast<uint32_t>(
      _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_subs_epu8(v0, nine), zero)));
  const uint32_t ok1 = static_cast<uint32_t>(
      _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_subs_epu8(v1, nine), zero)));
  const uint32_t need = w >= 32 ? 0xffffffffu : (1u << w) - 1;
  if (((ok0 | (ok1 << 16)) & need) != need) return false;
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), v0);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 16), v1);
  return true;
#else
  uint8_t bad = 0;
  for (int k = 0; k < w; ++k) {
    const uint8_t v = static_cast<uint8_t>(static_cast<uint8_t>(p[k]) - first);
    bad |= static_cast<uint8_t>(v >= kNumColours);
    dst[k] = v;
  }
  return !bad;
#endif
}

DecodeStatus decode_into(const TextFormat& fmt, const DecodeTable& tb, std::string_view text,
                         Grid* out) {
  const std::string_view row_end = fmt.row_end;
  const int8_t* lut = tb.lut;
  if (!tb.one_pass && !fmt.end_marker.empty()) {
    size_t cut = text.find(fmt.end_marker);
    if (cut != std::string_view::npos) text = text.substr(0, cut);
  }

  out->h = 0;
  out->w = 0;
  if (text.empty()) return DecodeStatus::kEmpty;
  // An upper bound on the cell count plus room for 32-byte row stores; trimmed at the end.
  out->cells.resize(text.size() + 32);
  uint8_t* dst = out->cells.data();
  if (tb.one_pass) {
    // Every byte is a cell, a row end, the end marker (stop) or an error.
    int width = 0;
    const char* p = text.data();
    const size_t n = text.size();
    for (size_t i = 0; i < n;) {
      if (width == 0 && out->h > 0 && i + out->w < n) {
        // Rows after the first have a known width: check and copy one at once and accept it
        // only if it is all cells followed by the row end; otherwise fall through to the
        // byte-by-byte path below, which finds the exact reason.
        const int w = out->w;
        bool ok;
        if (tb.contiguous && i + 32 <= n) {
          ok = row_of_cells(p + i, w, tb.first, dst);
        } else {
          uint8_t bad = 0;
          for (int k = 0; k < w; ++k) {
            const uint8_t v = static_cast<uint8_t>(lut[static_cast<unsigned char>(p[i + k])]);
            bad |= static_cast<uint8_t>(v >= kNumColours);
            dst[k] = v;
          }
          ok = !bad;
        }
        if (ok && p[i + w] == row_end[0]) {
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

DecodeTable make_decode_table(const TextFormat& fmt) {
  DecodeTable tb;
  std::memset(tb.lut, -1, sizeof(tb.lut));
  for (int c = 0; c < kNumColours; ++c) {
    tb.lut[static_cast<unsigned char>(fmt.alphabet[c])] = static_cast<int8_t>(c);
  }
  tb.one_pass = fmt.row_end.size() == 1 && fmt.end_marker.size() <= 1;
  if (tb.one_pass) {
    if (!fmt.end_marker.empty()) tb.lut[static_cast<unsigned char>(fmt.end_marker[0])] = kEnd;
    tb.lut[static_cast<unsigned char>(fmt.row_end[0])] = kRowEnd;
  }
  // The range check stands in for the table only when exactly ten consecutive bytes map to 0..9
  // (and neither the row end nor the end marker is among them).
  tb.first = static_cast<uint8_t>(fmt.alphabet[0]);
  tb.contiguous = tb.first <= 246;
  for (int c = 0; c < kNumColours && tb.contiguous; ++c) {
    tb.contiguous = tb.lut[static_cast<uint8_t>(tb.first + c)] == c;
  }
  return tb;
}

DecodeStatus decode_text(const TextFormat& fmt, const DecodeTable& table, std::string_view text,
                         Grid* out, const uint8_t* recolour) {
  const DecodeStatus st = decode_into(fmt, table, text, out);
  if (st != DecodeStatus::kOk) {
    // A rejected text leaves an empty grid, never a half-filled one.
    out->h = 0;
    out->w = 0;
    out->cells.clear();
  } else if (recolour != nullptr) {
    for (uint8_t& c : out->cells) c = recolour[c];
  }
  return st;
}

DecodeStatus decode_text(const TextFormat& fmt, std::string_view text, Grid* out,
                         const uint8_t* recolour) {
  return decode_text(fmt, make_decode_table(fmt), text, out, recolour);
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
