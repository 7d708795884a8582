#pragma once

// Gradient all-reduce for ranks that share one host, done by the GPUs' copy engines (DMA) instead
// of NCCL kernels, so that communication takes no SMs away from the backward it overlaps.
//
// Each bucket is split into one chunk per rank. Reduce-scatter: every rank copies chunk j of its
// bucket to rank j; rank j sums what it received into its own chunk and scales by 1/world (a
// small kernel on a side stream). All-gather: rank j copies its averaged chunk back to every
// rank. Chunks move in pieces of a few MiB so the two phases pipeline. Ranks never wait on the
// host: every copy is followed by a stream memory write of the round number into a flag, and the
// receiver's stream waits on that flag (cuStreamWriteValue32 / cuStreamWaitValue32).
//
// Two paths:
//   peer: buffers and flags are shared through CUDA IPC and copies go straight over NVLink/PCIe
//         peer access (every pair of GPUs must have it);
//   host: P2P is off (NCCL_P2P_DISABLE=1, or no peer access, e.g. 2xT4 on some hosts): chunks are
//         staged in pinned shared memory (/dev/shm) that every rank maps, device -> host -> device.
// Both make every rank hold bit-identical averages (one owner computes each element).

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <vector>

namespace nbdist::ddp {

struct BucketLayout {
  int64_t numel = 0;
  at::ScalarType dtype = at::kFloat;
  // An all-gather buffer instead of a bucket to average: chunk r (numel / world elements) is
  // rank r's; no reduce-scatter space is set aside for it (see gather()).
  bool gather_only = false;
};

class CopyEngineAllreduce {
 public:
  // Collective over `pg` (every rank calls it with the same layouts). `transport`: "peer",
  // "host" or "auto" (host when some pair of GPUs lacks peer access or P2P is disabled; null
  // when they all have it, because NCCL is faster there). Returns null on every rank when the
  // path cannot be used; `why` then names the rank and the reason.
  static std::unique_ptr<CopyEngineAllreduce> create(
      const c10::intrusive_ptr<::c10d::ProcessGroup>& pg, at::Device device,
      const std::vector<BucketLayout>& buckets, const std::string& transport, std::string* why);
  virtual ~CopyEngineAllreduce() = default;

  // The flat gradient buffer of bucket `index` (uninitialized; the reducer zeroes it).
  virtual at::Tensor bucket(int64_t index) const = 0;
  // Starts the average of bucket `index` once the work queued so far on the current stream (the
  // backward that produced its gradients) is done. `round` grows by one per reduction.
  virtual void launch(int64_t index, uint32_t round) = 0;
  // All-gather of a gather_only bucket: chunk r, written by rank r on its current stream, reaches
  // every rank's copy of the bucket. Only the first `bytes` of each chunk move (the same on
  // every rank). Collective; `round` as for launch(). finish() waits for it too.
  virtual void gather(int64_t index, uint32_t round, int64_t bytes) = 0;
  // Makes the current stream wait until every launched bucket is averaged on this rank.
  virtual void finish() = 0;
  // Blocks until this rank's copies and flag writes are done (before buffers are rebuilt).
  virtual void drain() = 0;
  virtual const char* path() const = 0;  // "peer" or "host"
};

}  // namespace nbdist::ddp
