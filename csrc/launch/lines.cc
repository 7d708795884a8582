#include "launch/lines.h"

namespace nbdist::launch {

void LineSplitter::feed(const char* data, size_t n, const Out& out) {
  size_t start = 0;
  for (size_t i = 0; i < n; ++i) {
    if (data[i] == '\n') {
      part_.append(data + start, i - start);
      out(visible(std::move(part_)));
      part_.clear();
      start = i + 1;
    }
  }
  part_.append(data + start, n - start);
  size_t cut = part_.rfind('\r', part_.size() >= 2 ? part_.size() - 2 : 0);
  bool has_cr = cut != std::string::npos || (!part_.empty() && part_.back() == '\r');
  if (has_cr) {
    if (cut != std::string::npos && (cut != part_.size() - 1)) part_.erase(0, cut + 1);
    std::string shown = part_;
    if (shown.empty() || shown.back() != '\r') shown.push_back('\r');
    out(std::move(shown));
  }
  if (part_.size() > kMaxPartial) flush(out);
}

void LineSplitter::flush(const Out& out) {
  if (!part_.empty()) out(visible(std::move(part_)));
  part_.clear();
}

std::string LineSplitter::visible(std::string text) {
  if (!text.empty() && text.back() == '\r') text.pop_back();
  size_t cr = text.rfind('\r');
  if (cr != std::string::npos) text.erase(0, cr + 1);
  return text;
}

}  // namespace nbdist::launch
