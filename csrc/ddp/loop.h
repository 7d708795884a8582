#pragma once

// nbdist.ddp.train's step loop. Python supplies callbacks for what only it can do (fetch the next
// batch, run the module's forward, step a user's torch.optim optimizer); everything else
// (accumulation, autocast, loss scaling, clipping, AdamW, the schedule, eval, logging,
// checkpoints, resume) happens here.

#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <vector>

#include "ddp/reducer.h"

namespace nbdist::ddp {

struct TrainConfig {
  int64_t max_steps = 0;        // optimizer steps in the whole run (resumed runs included)
  int64_t grad_accum = 1;       // micro-batches per optimizer step; communication on the last only
  double lr = 3e-4;             // peak learning rate
  double min_lr = 3e-5;         // final learning rate of the decay
  int64_t warmup_steps = 0;     // linear warm-up from lr/warmup_steps to lr
  std::string schedule = "cosine";  // "cosine" | "linear" | "constant" after warm-up
  double weight_decay = 0.1;    // AdamW decoupled decay, applied to tensors with >= 2 dims only
                                // (this and beta1/beta2/eps: built-in AdamW only)
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;       // max global L2 norm of the gradient; 0 disables clipping
  std::string precision = "bf16";  // "bf16" | "fp16" (with the loss scaler) | "fp32"
  int64_t eval_every = 0;       // optimizer steps between evals (and after the last); 0 = never
  int64_t eval_steps = 0;       // eval batches per rank per eval
  std::string ckpt_dir;         // empty: no checkpoints
  int64_t ckpt_every = 0;       // optimizer steps between checkpoints (and after the last)
  bool resume = true;           // continue from ckpt_dir/latest.pt when it exists
  int64_t log_every = 10;       // optimizer steps between rank-0 log lines; 0 = silent
  double tokens_per_micro_batch = 0;  // per rank, in throughput_unit; 0 = count micro-batches
  std::string throughput_unit = "tokens";  // "tokens" (MFU possible) or "samples"
  double flops_per_token = 0;   // model FLOPs per token (fwd+bwd); 0 = no MFU
  double peak_flops = 0;        // per device; 0 = no MFU
  double init_scale = 65536.0;  // fp16 loss scaler: initial scale
  double growth_factor = 2.0;   // scale *= growth_factor after growth_interval good steps
  double backoff_factor = 0.5;  // scale *= backoff_factor on a step with inf/nan gradients
  int64_t growth_interval = 2000;
  // Built-in AdamW only, on more than one rank: each rank keeps the moments of, and updates,
  // 1/world of the parameters (see adamw.h); the update is the same.
  bool shard_optimizer = false;
};

struct TrainCallbacks {
  std::function<at::Tensor(bool sync)> forward_loss;  // next micro-batch -> this rank's mean loss
  std::function<at::Tensor()> eval_loss;              // next eval batch -> loss; null: no eval
  std::function<void()> eval_reset;                   // restart the eval batches
  std::function<int64_t()> data_position;             // micro-batches consumed (for checkpoints)
  std::function<void(int64_t)> data_seek;             // continue from a checkpointed position
  std::function<void(const std::string&)> log;        // rank 0 only
  // A user optimizer (null: the built-in AdamW): step(lr) sets the schedule's lr and steps it on
  // the reduced, unscaled, clipped gradients; state/load carry its state_dict for checkpoints
  // (serialized by Python into a uint8 tensor).
  std::function<void(double lr)> optimizer_step;
  std::function<at::Tensor()> optimizer_state;
  std::function<void(const at::Tensor&)> optimizer_load;
};

struct StepRecord {
  int64_t step = 0;          // 1-based optimizer step
  double loss = 0;           // this rank's mean training loss over the step's micro-batches
  double lr = 0;
  double grad_norm = 0;      // global norm before clipping (unscaled)
  double scale = 1;          // loss scale used (1 without fp16)
  bool skipped = false;      // inf/nan gradients: the update was skipped (fp16)
  double seconds = 0;        // wall time of the step
  double throughput = 0;     // tokens/s or samples/s (or micro-batches/s) over all ranks
  double mfu = 0;            // model FLOPs utilization, 0 when unknown
  double eval_loss = 0;      // mean over ranks, when `evaluated`
  bool evaluated = false;    // an eval ran after this step (on some rank's batches)
};

// Runs the loop over the reducer's parameters (and `buffers`, checkpointed too).
std::vector<StepRecord> train(Reducer& reducer, const std::vector<at::Tensor>& buffers,
                              const TrainConfig& cfg, const TrainCallbacks& cb);

}  // namespace nbdist::ddp
