#pragma once

// Atomic checkpoints: a flat name -> tensor map pickled in torch.save's format (torch.load reads
// it), written to a temporary file in the same directory, fsynced, then renamed over the previous
// checkpoint, so a crash at any point leaves either the old or the new file complete.

#include <ATen/ATen.h>

#include <map>
#include <optional>
#include <string>

namespace nbdist::ddp {

using TensorMap = std::map<std::string, at::Tensor>;

// Writes `tensors` (moved to CPU) to `path` atomically. Throws DDPError naming the path on failure.
void save_checkpoint(const std::string& path, const TensorMap& tensors);

// Reads a checkpoint written by save_checkpoint; std::nullopt when `path` does not exist.
std::optional<TensorMap> load_checkpoint(const std::string& path);

}  // namespace nbdist::ddp
