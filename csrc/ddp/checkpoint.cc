#include "ddp/checkpoint.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <torch/csrc/jit/serialization/pickle.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>

#include "ddp/reducer.h"

namespace nbdist::ddp {

namespace {

[[noreturn]] void fail(const std::string& what, const std::string& path, int err) {
  throw DDPError(ErrorKind::kFailure, "checkpoint " + what + " '" + path + "' failed: " +
                                          std::strerror(err) + " (errno " + std::to_string(err) +
                                          ")");
}

void write_all(int fd, const char* data, size_t size, const std::string& path) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      fail("write", path, err);
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
}

std::string parent_dir(const std::string& path) {
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
}

}  // namespace

void save_checkpoint(const std::string& path, const TensorMap& tensors) {
  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& [name, t] : tensors) dict.insert(name, t.detach().cpu().contiguous());
  const std::vector<char> bytes = torch::jit::pickle_save(c10::IValue(dict));

  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("open", tmp, errno);
  // Fault injection for the crash-safety test: die by SIGKILL halfway through the N-th write of
  // this process (a forked rank counts from zero, not from its parent's count).
  static int writes = 0;
  static pid_t counted_in = 0;
  if (counted_in != ::getpid()) counted_in = ::getpid(), writes = 0;
  const char* kill_at = std::getenv("NBDIST_DDP_TEST_KILL_IN_CHECKPOINT_WRITE");
  if (++writes == (kill_at ? std::atoi(kill_at) : 0)) {
    write_all(fd, bytes.data(), bytes.size() / 2, tmp);
    ::fsync(fd);
    ::raise(SIGKILL);
  }
  write_all(fd, bytes.data(), bytes.size(), tmp);
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    fail("fsync", tmp, err);
  }
  if (::close(fd) != 0) fail("close", tmp, errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail("rename to", path, errno);
  // The rename itself must reach the disk before the old checkpoint is gone for good.
  const std::string dir = parent_dir(path);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

std::optional<TensorMap> load_checkpoint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (errno == ENOENT) return std::nullopt;
    fail("open", path, errno);
  }
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  c10::IValue value;
  try {
    value = torch::jit::pickle_load(bytes);
  } catch (const std::exception& e) {
    throw DDPError(ErrorKind::kInvalidInput,
                   "checkpoint '" + path + "' is not readable (truncated or not written by "
                   "nbdist.ddp): " + std::string(e.what()).substr(0, 200));
  }
  if (!value.isGenericDict())
    throw DDPError(ErrorKind::kInvalidInput, "checkpoint '" + path + "' does not hold a dict");
  TensorMap out;
  for (const auto& item : value.toGenericDict())
    out[item.key().toStringRef()] = item.value().toTensor();
  return out;
}

}  // namespace nbdist::ddp
