#pragma once
// Output bytes -> the lines a terminal shows, for the foreground launch (the supervisor's pipes)
// and for Job.stream() (the rank log files) alike.

#include <cstddef>
#include <functional>
#include <string>

namespace nbdist::launch {

class LineSplitter {
 public:
  using Out = std::function<void(std::string)>;

  // Each finished line goes to `out` without its newline, as shown (visible()). A line rewritten
  // with '\r' (a progress bar) may not end for minutes: what it shows now goes out at once,
  // marked by a trailing '\r', and only that much is kept. A line longer than max_partial bytes
  // is cut into pieces, so that a rank writing no newline cannot grow it without bound.
  void feed(const char* data, size_t n, const Out& out);
  // The unterminated last line, as finished (the stream ended), if there is one.
  void flush(const Out& out);

  // What a terminal shows of a finished line: a CR LF ending is a plain newline, and what was
  // written before the last '\r' has been overwritten.
  static std::string visible(std::string text);

  static constexpr size_t kMaxPartial = 64 * 1024;

 private:
  std::string part_;
};

}  // namespace nbdist::launch
