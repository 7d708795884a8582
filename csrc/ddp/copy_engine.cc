#include "ddp/copy_engine.h"

#include "ddp/reducer.h"  // DDPError

#ifdef NBDIST_DDP_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda.h>  // types and enums only: the driver is reached through dlsym
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>

#include "ddp/collectives.h"
#endif

namespace nbdist::ddp {

#ifndef NBDIST_DDP_CUDA

std::unique_ptr<CopyEngineAllreduce> CopyEngineAllreduce::create(
    const c10::intrusive_ptr<::c10d::ProcessGroup>&, at::Device, const std::vector<BucketLayout>&,
    const std::string&, std::string* why) {
  *why = "this build of nbdist has no CUDA support";
  return nullptr;
}

#else

namespace {

constexpr int64_t kAlign = 256;
constexpr int kMessageBytes = 240;  // error text carried by agree()
constexpr int kPhases = 2;          // reduce-scatter, all-gather

int64_t align_up(int64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

void check_cuda(cudaError_t err, const std::string& what) {
  if (err == cudaSuccess) return;
  cudaGetLastError();  // a non-sticky error must not surface in the next unrelated call
  throw DDPError(ErrorKind::kFailure, what + ": " + cudaGetErrorString(err));
}

using StreamValueFn = CUresult (*)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);

struct MemOps {
  StreamValueFn wait = nullptr;
  StreamValueFn write = nullptr;
};

// cuStreamWaitValue32 / cuStreamWriteValue32 from the driver the runtime already loaded.
const MemOps& mem_ops() {
  static const MemOps ops = [] {
    MemOps m;
    if (void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL)) {
      m.wait = reinterpret_cast<StreamValueFn>(dlsym(lib, "cuStreamWaitValue32_v2"));
      m.write = reinterpret_cast<StreamValueFn>(dlsym(lib, "cuStreamWriteValue32_v2"));
    }
    return m;
  }();
  return ops;
}

// The same on every process of one boot of one machine.
int64_t host_identity() {
  std::string boot;
  std::ifstream("/proc/sys/kernel/random/boot_id") >> boot;
  char name[256] = {0};
  gethostname(name, sizeof(name) - 1);
  return static_cast<int64_t>(std::hash<std::string>{}(boot + "/" + name) >> 1);
}

// Every rank's byte blob (same size everywhere), gathered over the group.
std::vector<std::vector<uint8_t>> exchange(const c10::intrusive_ptr<::c10d::ProcessGroup>& pg,
                                           at::Device device, const std::vector<uint8_t>& mine) {
  auto t = at::from_blob(const_cast<uint8_t*>(mine.data()), {static_cast<int64_t>(mine.size())},
                         at::TensorOptions().dtype(at::kByte));
  std::vector<std::vector<uint8_t>> out;
  for (const auto& c : all_gather(pg, t, device))
    out.emplace_back(c.data_ptr<uint8_t>(), c.data_ptr<uint8_t>() + c.numel());
  return out;
}

// Every rank says whether its part of a set-up step worked; returns "" when all did, else
// "rank r: <its message>" for the first rank that failed. All ranks get the same answer.
std::string agree(const c10::intrusive_ptr<::c10d::ProcessGroup>& pg, at::Device device,
                  const std::string& error) {
  std::vector<uint8_t> blob(1 + kMessageBytes, 0);
  blob[0] = error.empty() ? 1 : 0;
  std::memcpy(blob.data() + 1, error.data(), std::min<size_t>(error.size(), kMessageBytes - 1));
  auto all = exchange(pg, device, blob);
  for (size_t r = 0; r < all.size(); ++r)
    if (!all[r][0])
      return "rank " + std::to_string(r) + ": " +
             std::string(reinterpret_cast<const char*>(all[r].data() + 1));
  return "";
}

// Index of rank b among rank a's others (a != b): its slot in a's per-peer arrays.
int slot(int a, int b) { return b < a ? b : b - 1; }

struct DeviceMemory {
  void* ptr = nullptr;
  ~DeviceMemory() {
    if (ptr) cudaFree(ptr);  // at interpreter exit the runtime may be gone: nothing to report
  }
};

struct SharedHostMemory {
  void* ptr = nullptr;
  size_t bytes = 0;
  bool registered = false;
  ~SharedHostMemory() {
    if (registered) cudaHostUnregister(ptr);
    if (ptr) munmap(ptr, bytes);
  }
};

// Where one bucket's pieces live. Identical on every rank (computed from the layouts only).
struct Plan {
  int64_t numel = 0, esize = 0;
  at::ScalarType dtype = at::kFloat;
  int64_t chunk = 0;        // elements owned by each rank (the last owners may get fewer)
  int64_t piece = 0;        // elements per piece
  int64_t pieces = 0;       // pieces per chunk
  int64_t bucket_off = 0;   // bytes into the device arena: the gradients
  int64_t recv_off = 0;     // bytes into the device arena: world-1 chunks received
  int64_t host_rs_off = 0;  // bytes into the shared host arena: world*(world-1) chunks
  int64_t host_ag_off = 0;  // bytes into the shared host arena: world chunks
  int64_t flag_base = 0;    // first flag cell: kPhases*pieces*world*world cells
  int64_t piece_base = 0;   // first of this bucket's per-piece events (piece averaged)
};

class CopyEngineImpl final : public CopyEngineAllreduce {
 public:
  CopyEngineImpl(int rank, int world, at::Device device, bool peer)
      : rank_(rank), world_(world), device_(device), peer_(peer) {}

  ~CopyEngineImpl() override {
    c10::cuda::CUDAGuard guard(device_);
    bool idle = true;
    for (auto s : streams_) idle = idle && (!s || cudaStreamQuery(s) == cudaSuccess);
    if (!idle) {
      // A peer went away mid-round and a copy may still target its memory or ours: keep the
      // mappings for the life of the process rather than unmap under a DMA (the process is
      // being torn down anyway).
      static std::vector<std::shared_ptr<SharedHostMemory>> kept_mapped;
      kept_mapped.push_back(std::move(host_));
      return;
    }
    for (auto p : peer_base_)
      if (p) cudaIpcCloseMemHandle(p);
    for (auto s : streams_)
      if (s) cudaStreamDestroy(s);
    for (auto e : events_) cudaEventDestroy(e);
  }

  void plan(const std::vector<BucketLayout>& buckets) {
    int64_t piece_bytes = 4 << 20;
    if (const char* env = std::getenv("NBDIST_CE_PIECE_KB")) piece_bytes = std::atoll(env) << 10;
    piece_bytes = std::max<int64_t>(piece_bytes, 64 << 10);
    int64_t dev = 0, host = 0, cells = 0, pieces = 0;
    for (const auto& b : buckets) {
      Plan p;
      p.numel = b.numel;
      p.dtype = b.dtype;
      p.esize = static_cast<int64_t>(c10::elementSize(b.dtype));
      p.chunk = (b.numel + world_ - 1) / world_;
      p.piece = std::max<int64_t>(1, piece_bytes / p.esize);
      p.pieces = std::max<int64_t>(1, (p.chunk + p.piece - 1) / p.piece);
      p.bucket_off = dev;
      dev = align_up(dev + p.numel * p.esize);
      p.recv_off = dev;
      const int64_t others = b.gather_only ? 0 : world_ - 1;  // chunks received to sum
      dev = align_up(dev + others * p.chunk * p.esize);
      if (!peer_) {
        p.host_rs_off = host;
        host = align_up(host + int64_t{world_} * others * p.chunk * p.esize);
        p.host_ag_off = host;
        host = align_up(host + int64_t{world_} * p.chunk * p.esize);
      }
      p.flag_base = cells;
      cells += kPhases * p.pieces * world_ * world_;
      p.piece_base = pieces;
      pieces += p.pieces;
      plans_.push_back(p);
    }
    // Flags live on the receiving GPU (peer path) or in the shared host memory (host path).
    flag_cells_ = cells;
    piece_events_ = pieces;
    if (!peer_) {
      host_flags_off_ = host;
      host = align_up(host + cells * 4);
    } else {
      flags_off_ = dev;
      dev = align_up(dev + cells * 4);
    }
    device_bytes_ = dev;
    host_bytes_ = host;
  }

  // Local set-up: device arena, streams, events. Throws on failure.
  void allocate() {
    c10::cuda::CUDAGuard guard(device_);
    const auto& ops = mem_ops();
    if (!ops.wait || !ops.write)
      throw DDPError(ErrorKind::kFailure, "the driver has no cuStreamWaitValue32_v2");
    arena_mem_ = std::make_shared<DeviceMemory>();
    check_cuda(cudaMalloc(&arena_mem_->ptr, device_bytes_),
               "cudaMalloc of " + std::to_string(device_bytes_ >> 20) + " MiB");
    if (peer_)
      check_cuda(cudaMemset(static_cast<char*>(arena_mem_->ptr) + flags_off_, 0, flag_cells_ * 4),
                 "cudaMemset");
    check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    auto keep = arena_mem_;
    arena_ = at::from_blob(
        arena_mem_->ptr, {device_bytes_}, [keep](void*) mutable { keep.reset(); },
        at::TensorOptions().dtype(at::kByte).device(device_));
    for (auto& s : streams_)
      check_cuda(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
    // One flag write and wait, so an unsupported driver fails here and not mid-backward.
    uint32_t* probe = nullptr;
    check_cuda(cudaMalloc(&probe, 4), "cudaMalloc");
    CUresult r1 = ops.write(streams_[0], reinterpret_cast<CUdeviceptr>(probe), 7, 0);
    CUresult r2 = ops.wait(streams_[0], reinterpret_cast<CUdeviceptr>(probe), 7, 0);
    cudaError_t r3 = cudaStreamSynchronize(streams_[0]);
    cudaFree(probe);
    if (r1 != CUDA_SUCCESS || r2 != CUDA_SUCCESS)
      throw DDPError(ErrorKind::kFailure, "stream memory operations are not supported (CUresult " +
                                              std::to_string(r1 ? r1 : r2) + ")");
    check_cuda(r3, "stream memory operation");
    // One per bucket (gradients ready), one per stream (done), one per piece (averaged).
    for (int64_t i = 0; i < static_cast<int64_t>(plans_.size()) + kStreams + piece_events_; ++i) {
      cudaEvent_t e = nullptr;
      check_cuda(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
      events_.push_back(e);
    }
  }

  std::vector<uint8_t> ipc_handle() const {
    cudaIpcMemHandle_t h;
    check_cuda(cudaIpcGetMemHandle(&h, arena_mem_->ptr), "cudaIpcGetMemHandle");
    const auto* p = reinterpret_cast<const uint8_t*>(&h);
    return std::vector<uint8_t>(p, p + sizeof(h));
  }

  void open_peers(const std::vector<std::vector<uint8_t>>& handles) {
    c10::cuda::CUDAGuard guard(device_);
    peer_base_.assign(world_, nullptr);
    for (int r = 0; r < world_; ++r) {
      if (r == rank_) continue;
      cudaIpcMemHandle_t h;
      std::memcpy(&h, handles[r].data(), sizeof(h));
      check_cuda(cudaIpcOpenMemHandle(&peer_base_[r], h, cudaIpcMemLazyEnablePeerAccess),
                 "cudaIpcOpenMemHandle of rank " + std::to_string(r) + "'s buffers");
    }
  }

  // Rank 0 creates the shared staging file (the caller unlinks it once every rank mapped it).
  std::string create_host_file() const {
    static std::atomic<int> counter{0};
    const std::string name =
        "/dev/shm/nbdist-ce-" + std::to_string(getpid()) + "-" + std::to_string(counter++);
    int fd = open(name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) throw SystemError("copy-engine all-reduce: open(" + name + ")", errno);
    // Reserve the pages now: a tmpfs that is too small must fail here, not with SIGBUS later.
    int err = posix_fallocate(fd, 0, static_cast<off_t>(host_bytes_));
    close(fd);
    if (err != 0) {
      unlink(name.c_str());
      throw SystemError("copy-engine all-reduce: reserving " + std::to_string(host_bytes_ >> 20) +
                            " MiB in /dev/shm (df -h /dev/shm)",
                        err);
    }
    return name;
  }

  void map_host_file(const std::string& name) {
    c10::cuda::CUDAGuard guard(device_);
    int fd = open(name.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) throw SystemError("copy-engine all-reduce: open(" + name + ")", errno);
    host_ = std::make_shared<SharedHostMemory>();
    void* p = mmap(nullptr, host_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    const int err = errno;
    close(fd);
    if (p == MAP_FAILED) throw SystemError("copy-engine all-reduce: mmap(" + name + ")", err);
    host_->ptr = p;
    host_->bytes = host_bytes_;
    check_cuda(cudaHostRegister(p, host_bytes_, cudaHostRegisterPortable | cudaHostRegisterMapped),
               "cudaHostRegister of " + std::to_string(host_bytes_ >> 20) + " MiB");
    host_->registered = true;
    void* dev = nullptr;
    check_cuda(cudaHostGetDevicePointer(&dev, p, 0), "cudaHostGetDevicePointer");
    host_flags_dev_ = static_cast<char*>(dev) + host_flags_off_;
    // Flags in host memory need the driver's support for stream memory operations on it: try
    // one (a write of 0 and a wait for >= 0, which leaves the cells as they are).
    const auto cell = reinterpret_cast<CUdeviceptr>(host_flags_dev_);
    const CUresult w = mem_ops().write(streams_[0], cell, 0, 0);
    const CUresult r = w == CUDA_SUCCESS ? mem_ops().wait(streams_[0], cell, 0, 0) : w;
    if (r != CUDA_SUCCESS)
      throw DDPError(ErrorKind::kFailure,
                     "stream memory operations on host memory are not supported (CUresult " +
                         std::to_string(r) + ")");
    check_cuda(cudaStreamSynchronize(streams_[0]), "stream memory operation on host memory");
  }

  at::Tensor bucket(int64_t index) const override {
    const auto& p = plans_[index];
    return arena_.narrow(0, p.bucket_off, p.numel * p.esize).view(p.dtype);
  }

  const char* path() const override { return peer_ ? "peer" : "host"; }

  void launch(int64_t index, uint32_t round) override {
    c10::cuda::CUDAGuard guard(device_);
    const auto& p = plans_[index];
    auto current = c10::cuda::getCurrentCUDAStream(device_.index());
    auto send = stream(0), reduce = stream(1), gather = stream(2), publish = stream(3);
    order(current, events_[index], {send, reduce});

    // Reduce-scatter, sending side: chunk j of this bucket goes to rank j.
    for (int64_t k = 0; k < p.pieces; ++k) {
      for (int j = 0; j < world_; ++j) {
        if (j == rank_) continue;
        const auto [start, len] = range(p, j, k);
        void* dst = peer_ ? peer(j) + recv_at(p, j, rank_, k) : host_rs(p, rank_, j, k);
        copy(dst, mine() + p.bucket_off + start * p.esize, len * p.esize, send);
        signal(send, p, 0, k, rank_, j, round);
      }
    }

    // Reduce-scatter, receiving side, then the all-gather of this rank's averaged chunk.
    const auto own_all = bucket(index);
    for (int64_t k = 0; k < p.pieces; ++k) {
      const auto [start, len] = range(p, rank_, k);
      if (peer_) {
        for (int s = 0; s < world_; ++s)
          if (s != rank_) wait(reduce, p, 0, k, s, rank_, round);
      } else {
        // Host path: the pieces come in host -> device first. (A stream of their own, to overlap
        // the next fetch with this sum, shortened the tail on 2xH200 but slowed backward more.)
        for (int s = 0; s < world_; ++s) {
          if (s == rank_) continue;
          wait(reduce, p, 0, k, s, rank_, round);
          copy(mine() + recv_at(p, rank_, s, k), host_rs(p, s, rank_, k), len * p.esize, reduce);
        }
      }
      if (len > 0) {
        c10::cuda::CUDAStreamGuard on(reduce);
        auto own = own_all.narrow(0, start, len);
        for (int s = 0; s < world_; ++s) {
          if (s == rank_) continue;
          const auto recv = arena_.narrow(0, recv_at(p, rank_, s, k), len * p.esize).view(p.dtype);
          // Two ranks: one kernel for the average (the host enqueues every op of the last
          // bucket after backward, so each launch saved shortens the exposed tail).
          if (world_ == 2)
            own.lerp_(recv, 0.5);
          else
            own.add_(recv);
        }
        if (world_ > 2) own.mul_(1.0 / world_);
      }
      // The average goes out on a stream of its own, so that the next piece's fetch and sum
      // overlap it (2xH200, P2P off: 1.087x instead of 1.071x torch DDP).
      order(reduce, piece_event(p, k), {publish});
      publish_piece(p, k, start, len, publish, round);
      // All-gather, receiving side (host path): piece k of the other ranks' averages. Queued
      // here, piece by piece, rather than after the whole loop: the host's enqueueing of the
      // last bucket is on the critical path, and this lets the fetches start early.
      if (!peer_) fetch_piece(p, k, p.chunk, gather, round);
    }

    // All-gather, receiving side (peer path): the other ranks' averaged chunks are in this
    // bucket once their last piece's flag is up (pieces arrive in order).
    if (peer_)
      for (int s = 0; s < world_; ++s)
        if (s != rank_) wait(gather, p, 1, p.pieces - 1, s, rank_, round);
  }

  void gather(int64_t index, uint32_t round, int64_t bytes) override {
    c10::cuda::CUDAGuard guard(device_);
    const auto& p = plans_[index];
    auto current = c10::cuda::getCurrentCUDAStream(device_.index());
    auto publish = stream(3), gather = stream(2);
    order(current, events_[index], {publish});
    // No reduce-scatter comes first to pace the ranks, so they shake hands: each tells every other
    // rank that it is done with the previous round (its current stream got here, so it read its
    // copy of the bucket and, on the host path, fetched their staged chunks), and nobody writes
    // a piece until all others said so.
    for (int j = 0; j < world_; ++j)
      if (j != rank_) signal(publish, p, 0, 0, rank_, j, round);
    for (int j = 0; j < world_; ++j)
      if (j != rank_) wait(publish, p, 0, 0, j, rank_, round);
    const int64_t used = std::min(p.chunk, (bytes + p.esize - 1) / p.esize);
    // Then the all-gather half of launch(), each rank's own chunk standing for its average.
    for (int64_t k = 0; k < p.pieces && k * p.piece < used; ++k) {
      const auto len = std::min(p.piece, used - k * p.piece);
      publish_piece(p, k, rank_ * p.chunk + k * p.piece, len, publish, round);
      if (!peer_) {
        fetch_piece(p, k, used, gather, round);
      } else {
        for (int s = 0; s < world_; ++s)
          if (s != rank_) wait(gather, p, 1, k, s, rank_, round);
      }
    }
  }

  void drain() override {
    c10::cuda::CUDAGuard guard(device_);
    for (auto s : streams_) check_cuda(cudaStreamSynchronize(s), "copy-engine all-reduce: drain");
  }

  void finish() override {
    c10::cuda::CUDAGuard guard(device_);
    auto current = c10::cuda::getCurrentCUDAStream(device_.index());
    for (int i = 0; i < kStreams; ++i) order(stream(i), events_[plans_.size() + i], {current});
  }

 private:
  static constexpr int kStreams = 4;  // send, reduce, gather, publish

  c10::cuda::CUDAStream stream(int i) const {
    return c10::cuda::getStreamFromExternal(streams_[i], device_.index());
  }
  char* mine() const { return static_cast<char*>(arena_mem_->ptr); }
  char* peer(int r) const { return static_cast<char*>(peer_base_[r]); }
  char* host() const { return static_cast<char*>(host_->ptr); }
  // Byte offset, in `receiver`'s arena, of piece k that `src` sends it in the reduce-scatter.
  static int64_t recv_at(const Plan& p, int receiver, int src, int64_t k) {
    return p.recv_off + (slot(receiver, src) * p.chunk + k * p.piece) * p.esize;
  }
  // Host path: where `src` stages piece k of `dst`'s chunk (reduce-scatter) ...
  char* host_rs(const Plan& p, int src, int dst, int64_t k) const {
    return host() + p.host_rs_off +
           ((int64_t{src} * (world_ - 1) + slot(src, dst)) * p.chunk + k * p.piece) * p.esize;
  }
  // ... and where `owner` stages piece k of its average (all-gather).
  char* host_ag(const Plan& p, int owner, int64_t k) const {
    return host() + p.host_ag_off + (int64_t{owner} * p.chunk + k * p.piece) * p.esize;
  }

  // All-gather, sending side: piece k of this rank's chunk (elements [start, start + len) of the
  // bucket) goes straight into every other rank's bucket (peer) or into this rank's staging slot
  // (host), each followed by its phase-1 flag.
  void publish_piece(const Plan& p, int64_t k, int64_t start, int64_t len,
                     const c10::cuda::CUDAStream& s, uint32_t round) const {
    const char* src = mine() + p.bucket_off + start * p.esize;
    if (!peer_) {
      copy(host_ag(p, rank_, k), src, len * p.esize, s);
      signal(s, p, 1, k, rank_, rank_, round);
      return;
    }
    for (int j = 0; j < world_; ++j) {
      if (j == rank_) continue;
      copy(peer(j) + p.bucket_off + start * p.esize, src, len * p.esize, s);
      signal(s, p, 1, k, rank_, j, round);
    }
  }
  // All-gather, receiving side of the host path: piece k of every other rank's chunk, host ->
  // device once its flag is up; only the first `limit` elements of each chunk.
  void fetch_piece(const Plan& p, int64_t k, int64_t limit, const c10::cuda::CUDAStream& s,
                   uint32_t round) const {
    for (int r = 0; r < world_; ++r) {
      if (r == rank_) continue;
      wait(s, p, 1, k, r, r, round);
      const auto [start, len] = range(p, r, k);
      const auto n = std::min(len, limit - k * p.piece);
      copy(mine() + p.bucket_off + start * p.esize, host_ag(p, r, k), n * p.esize, s);
    }
  }

  // Elements [start, start+len) of piece k of `owner`'s chunk (len may be 0 for tiny buckets).
  static std::pair<int64_t, int64_t> range(const Plan& p, int owner, int64_t k) {
    const int64_t begin = owner * p.chunk + k * p.piece;
    const int64_t end = std::min({owner * p.chunk + std::min((k + 1) * p.piece, p.chunk), p.numel});
    return {begin, std::max<int64_t>(0, end - begin)};
  }

  // The flag of (phase, piece, src -> dst): on dst's GPU for the peer path, in host memory else.
  CUdeviceptr flag(const Plan& p, int phase, int64_t k, int src, int dst) const {
    const int64_t cell = p.flag_base + ((phase * p.pieces + k) * world_ + src) * world_ + dst;
    char* base = peer_ ? (dst == rank_ ? mine() : peer(dst)) + flags_off_ : host_flags_dev_;
    return reinterpret_cast<CUdeviceptr>(base + cell * 4);
  }

  // Work queued later on each of `after` waits for what `before` has queued so far.
  static void order(const c10::cuda::CUDAStream& before, cudaEvent_t event,
                    std::initializer_list<c10::cuda::CUDAStream> after) {
    check_cuda(cudaEventRecord(event, before.stream()), "copy-engine all-reduce: cudaEventRecord");
    for (const auto& s : after)
      check_cuda(cudaStreamWaitEvent(s.stream(), event, 0),
                 "copy-engine all-reduce: cudaStreamWaitEvent");
  }

  void copy(void* dst, const void* src, int64_t bytes, const c10::cuda::CUDAStream& s) const {
    if (bytes > 0)
      check_cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, s.stream()),
                 "copy-engine all-reduce: cudaMemcpyAsync");
  }
  // Piece k of this rank's chunk is averaged (the publish stream waits for it).
  cudaEvent_t piece_event(const Plan& p, int64_t k) const {
    return events_[plans_.size() + kStreams + p.piece_base + k];
  }
  // Writes `round` into a flag once the work queued before on `s` is done. The default flags put
  // a memory fence before the write: what was copied before it is visible to whoever sees it.
  static void post(const c10::cuda::CUDAStream& s, CUdeviceptr flag, uint32_t round) {
    if (mem_ops().write(s.stream(), flag, round, 0) != CUDA_SUCCESS)
      throw DDPError(ErrorKind::kFailure, "copy-engine all-reduce: cuStreamWriteValue32 failed");
  }
  // Later work on `s` waits until the flag reaches `round`.
  static void await(const c10::cuda::CUDAStream& s, CUdeviceptr flag, uint32_t round) {
    if (mem_ops().wait(s.stream(), flag, round, CU_STREAM_WAIT_VALUE_GEQ) != CUDA_SUCCESS)
      throw DDPError(ErrorKind::kFailure, "copy-engine all-reduce: cuStreamWaitValue32 failed");
  }
  void signal(const c10::cuda::CUDAStream& s, const Plan& p, int phase, int64_t k, int src, int dst,
              uint32_t round) const {
    post(s, flag(p, phase, k, src, dst), round);
  }
  void wait(const c10::cuda::CUDAStream& s, const Plan& p, int phase, int64_t k, int src, int dst,
            uint32_t round) const {
    await(s, flag(p, phase, k, src, dst), round);
  }

  int rank_, world_;
  at::Device device_;
  bool peer_;
  int64_t piece_events_ = 0;
  std::vector<Plan> plans_;
  int64_t device_bytes_ = 0, host_bytes_ = 0, flag_cells_ = 0;
  int64_t flags_off_ = 0, host_flags_off_ = 0;
  std::shared_ptr<DeviceMemory> arena_mem_;
  at::Tensor arena_;  // bytes; every bucket is a view of it
  std::vector<void*> peer_base_;
  std::shared_ptr<SharedHostMemory> host_;
  char* host_flags_dev_ = nullptr;
  cudaStream_t streams_[kStreams] = {};
  std::vector<cudaEvent_t> events_;
};

// What this rank can do: [host identity, PCI domain, bus, device, P2P disabled by env].
std::vector<uint8_t> local_info(at::Device device) {
  int64_t info[5] = {host_identity(), -1, -1, -1, 0};
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, device.index()) == cudaSuccess) {
    info[1] = prop.pciDomainID, info[2] = prop.pciBusID, info[3] = prop.pciDeviceID;
  }
  const char* off = std::getenv("NCCL_P2P_DISABLE");
  info[4] = off && std::string(off) != "0";
  const auto* p = reinterpret_cast<const uint8_t*>(info);
  return std::vector<uint8_t>(p, p + sizeof(info));
}

// "" when this rank's GPU has peer access to every other rank's GPU, else why not.
std::string peer_access(at::Device device, const std::vector<std::vector<uint8_t>>& infos,
                        int rank) {
  for (size_t r = 0; r < infos.size(); ++r) {
    const auto* info = reinterpret_cast<const int64_t*>(infos[r].data());
    if (info[4]) return "NCCL_P2P_DISABLE is set on rank " + std::to_string(r);
    if (static_cast<int>(r) == rank) continue;
    char bus[32];
    std::snprintf(bus, sizeof(bus), "%04x:%02x:%02x.0", static_cast<unsigned>(info[1]),
                  static_cast<unsigned>(info[2]), static_cast<unsigned>(info[3]));
    int other = -1, can = 0;
    if (cudaDeviceGetByPCIBusId(&other, bus) != cudaSuccess) {
      cudaGetLastError();
      return std::string("rank ") + std::to_string(r) + "'s GPU " + bus + " is not visible here";
    }
    if (other == device.index()) return "rank " + std::to_string(r) + " uses the same GPU";
    if (cudaDeviceCanAccessPeer(&can, device.index(), other) != cudaSuccess || !can)
      return std::string("no peer access to rank ") + std::to_string(r) + "'s GPU " + bus;
  }
  return "";
}

}  // namespace

std::unique_ptr<CopyEngineAllreduce> CopyEngineAllreduce::create(
    const c10::intrusive_ptr<::c10d::ProcessGroup>& pg, at::Device device,
    const std::vector<BucketLayout>& buckets, const std::string& transport, std::string* why) {
  const int rank = pg->getRank(), world = pg->getSize();
  c10::cuda::CUDAGuard guard(device);
  auto infos = exchange(pg, device, local_info(device));
  for (const auto& info : infos)
    if (std::memcmp(info.data(), infos[0].data(), sizeof(int64_t)) != 0) {
      *why = "the ranks are not all on one host";
      return nullptr;
    }
  // Every rank must agree on the path, so peer access is settled collectively first.
  std::string peer_why =
      transport == "host" ? "host requested" : agree(pg, device, peer_access(device, infos, rank));
  const bool peer = peer_why.empty();
  if (transport == "peer" && !peer) {
    *why = "no peer path: " + peer_why;
    return nullptr;
  }
  if (transport == "auto" && peer) {
    // Measured on 2xH200 over NVLink (bench/results/ddp_sweep_2xh200.json): NCCL's all-reduce
    // costs backward less than peer copies do; the copy engines win only without P2P.
    *why = "the GPUs have peer access, where the process group's all-reduce is faster";
    return nullptr;
  }
  auto impl = std::make_unique<CopyEngineImpl>(rank, world, device, peer);
  impl->plan(buckets);
  auto attempt = [&](const std::function<void()>& step) {
    std::string error;
    try {
      step();
    } catch (const std::exception& e) {
      error = e.what();
    }
    return agree(pg, device, error);
  };
  std::string failed = attempt([&] { impl->allocate(); });
  if (failed.empty() && peer) {
    auto handles = exchange(pg, device, impl->ipc_handle());
    failed = attempt([&] { impl->open_peers(handles); });
  }
  if (failed.empty() && !peer) {
    std::vector<uint8_t> name(256, 0);
    failed = attempt([&] {
      if (rank != 0) return;
      const auto n = impl->create_host_file();
      std::memcpy(name.data(), n.data(), std::min<size_t>(n.size(), name.size() - 1));
    });
    if (failed.empty()) {
      const auto names = exchange(pg, device, name);
      const std::string file(reinterpret_cast<const char*>(names[0].data()));
      failed = attempt([&] { impl->map_host_file(file); });
      if (rank == 0) unlink(file.c_str());  // every rank has it mapped (or gave up)
    }
  }
  if (!failed.empty()) {
    *why = std::string(peer ? "peer" : "host") + " path set-up failed on " + failed;
    return nullptr;
  }
  return impl;
}

#endif  // NBDIST_DDP_CUDA

}  // namespace nbdist::ddp
