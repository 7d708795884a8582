#pragma once

// Small blocking collectives shared by the reducer and the copy-engine all-reduce.

#include <ATen/ATen.h>

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <vector>

namespace nbdist::ddp {

// Every rank's `input` (same shape everywhere), in rank order and on the CPU. The gather runs on
// `device`, where the process group's backend needs its tensors (NCCL: the rank's GPU).
inline std::vector<at::Tensor> all_gather(const c10::intrusive_ptr<::c10d::ProcessGroup>& pg,
                                          const at::Tensor& input, const at::Device& device) {
  auto local = input.to(device);
  std::vector<std::vector<at::Tensor>> out(1);
  for (int r = 0; r < pg->getSize(); ++r) out[0].push_back(at::empty_like(local));
  std::vector<at::Tensor> in{local};
  pg->allgather(out, in)->wait();
  std::vector<at::Tensor> result;
  for (auto& t : out[0]) result.push_back(t.cpu());
  return result;
}

// Flat all-gather (`in` is this rank's slice of `out`, or a tensor of that size) and flat
// reduce-scatter (`out` this rank's slice of `in`, or a tensor of that size): torch 2.11 names
// them _allgather_base / _reduce_scatter_base, later releases keep those names as deprecated
// aliases. With `in`/`out` the rank's own slice they run in place (NCCL and Gloo).
inline c10::intrusive_ptr<::c10d::Work> all_gather_flat(
    const c10::intrusive_ptr<::c10d::ProcessGroup>& pg, at::Tensor& out, at::Tensor& in) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  return pg->_allgather_base(out, in);
#pragma GCC diagnostic pop
}

// Flat all-gathers of several tensors as one collective (NCCL: one group call).
inline c10::intrusive_ptr<::c10d::Work> all_gather_flat_coalesced(
    const c10::intrusive_ptr<::c10d::ProcessGroup>& pg, std::vector<at::Tensor>& out,
    std::vector<at::Tensor>& in) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  return pg->allgather_into_tensor_coalesced(out, in);
#pragma GCC diagnostic pop
}

inline c10::intrusive_ptr<::c10d::Work> reduce_scatter_flat(
    const c10::intrusive_ptr<::c10d::ProcessGroup>& pg, at::Tensor& out, at::Tensor& in,
    const ::c10d::ReduceScatterOptions& opts) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  return pg->_reduce_scatter_base(out, in, opts);
#pragma GCC diagnostic pop
}

}  // namespace nbdist::ddp
