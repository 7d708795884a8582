#pragma once

// Model output text -> grid. One character per cell (an alphabet of ten single-byte symbols, one
// per colour), every row ended by row_end, the grid optionally followed by end_marker (anything
// after the first end_marker is ignored: it is what the model generated past its answer).

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "arc/grid.h"

namespace nbdist::arc {

struct TextFormat {
  std::array<char, kNumColours> alphabet{'0', '1', '2', '3', '4', '5', '6', '7', '8', '9'};
  std::string row_end = "\n";  // ends every row, the last one included; never empty
  std::string end_marker;      // "" means the text is the grid alone
};

// Why a text is not a grid; kOk when it is.
enum class DecodeStatus { kOk, kEmpty, kBadSymbol, kRagged, kTooLarge, kUnterminatedRow };

const char* decode_status_name(DecodeStatus s);

// Decodes text into *out; never throws on bad text (bulk decoding counts failures instead).
// recolour (optional, 10 entries) maps each decoded colour on the fly, so that undoing a colour
// permutation costs nothing extra.
DecodeStatus decode_text(const TextFormat& fmt, std::string_view text, Grid* out,
                         const uint8_t* recolour = nullptr);

// The byte -> colour table of a format. Bulk decoding builds it once per batch: rebuilding it per
// text cost as much as decoding a small grid.
struct DecodeTable {
  int8_t lut[256];         // colour, kRowEnd, kEnd, or -1 for any other byte
  bool one_pass = false;   // one-byte row end and end marker: a single scan finds both
  bool contiguous = false; // the alphabet is ten consecutive bytes (rows are checked 16 at a time)
  uint8_t first = 0;       // the alphabet's first byte when contiguous
};
DecodeTable make_decode_table(const TextFormat& fmt);
DecodeStatus decode_text(const TextFormat& fmt, const DecodeTable& table, std::string_view text,
                         Grid* out, const uint8_t* recolour = nullptr);

std::string encode_grid(const TextFormat& fmt, const Grid& g);

}  // namespace nbdist::arc
