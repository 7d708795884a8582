#pragma once

// Small blocking collectives shared by the reducer and the copy-engine all-reduce.

#include <ATen/ATen.h>

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <vector>

namespace nbdist::ddp {

// Every rank's `input` (same shape everywhere), in rank order.
inline std::vector<at::Tensor> all_gather(const c10::intrusive_ptr<::c10d::ProcessGroup>& pg,
                                          const at::Tensor& input) {
  std::vector<std::vector<at::Tensor>> out(1);
  for (int r = 0; r < pg->getSize(); ++r) out[0].push_back(at::empty_like(input));
  std::vector<at::Tensor> in{input};
  pg->allgather(out, in)->wait();
  return out[0];
}

}  // namespace nbdist::ddp
