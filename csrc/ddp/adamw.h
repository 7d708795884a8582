#pragma once

// train()'s built-in AdamW (decoupled weight decay on tensors of >= 2 dims), in two layouts:
//  * AdamW: every rank keeps the moments of every parameter and updates all of them from the
//    all-reduced gradients;
//  * ShardedAdamW (TrainConfig.shard_optimizer, ZeRO stage 1): the reducer reduce-scatters each
//    gradient bucket (Reducer::set_sharded), so rank r holds the average of the r-th slice of
//    each bucket only; it keeps the moments of, and updates, that slice, and the updated slices
//    are all-gathered back into the parameters, whose storage moves into one flat buffer per
//    bucket for it (the parameter tensors themselves stay the same objects). Each rank holds
//    1/world of the moments and runs 1/world of the update; the gradients cross the wire once
//    either way (reduce-scatter + all-gather move what one all-reduce does).
// Both write the same checkpoint entries, so a run resumes in either layout on any world size.

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ddp/checkpoint.h"
#include "ddp/loop.h"
#include "ddp/reducer.h"

namespace nbdist::ddp {

// A checkpoint entry by name (raises naming the file when it is missing).
using CheckpointGet = std::function<const at::Tensor&(const std::string& key)>;

class AdamWBase {
 public:
  virtual ~AdamWBase() = default;
  // The gradients this rank clips and updates from: every defined one, or its slices of them
  // (a parameter no rank used has no gradient and is left alone, decay and moments alike).
  virtual std::vector<at::Tensor> grads() = 0;
  // This rank's norm of grads() and (fp16) found-inf flag, made global in place: the local ones
  // already are when every rank holds every averaged gradient; a small all-reduce otherwise.
  virtual void reduce_norm(at::Tensor& norm, at::Tensor& found_inf) {}
  // found_inf (defined: nonzero skips the update on the device, step counts included).
  virtual void step(double lr, const at::Tensor& found_inf) = 0;
  // Until this returns the parameters may still be receiving the other ranks' slices.
  virtual void wait() {}
  // Entries "adamw.exp_avg.<i>", "adamw.exp_avg_sq.<i>", "adamw.step.<i>" per parameter (in
  // registration order), whole. Collective when sharded; `ck` is null on ranks that do not write.
  virtual void save(TensorMap* ck) = 0;
  // check() raises naming the first entry with the wrong shape (the same in both layouts: the
  // entries are whole); load() then copies them in.
  void check(const CheckpointGet& get, const std::string& path) const;
  virtual void load(const CheckpointGet& get) = 0;

 protected:
  explicit AdamWBase(std::vector<at::Tensor> params);
  std::vector<at::Tensor> params_;
  std::vector<at::Tensor> steps_;  // every parameter's step count (on every rank)
};

class AdamW : public AdamWBase {
 public:
  AdamW(const std::vector<at::Tensor>& params, const TrainConfig& cfg);
  std::vector<at::Tensor> grads() override;
  void step(double lr, const at::Tensor& found_inf) override;
  void save(TensorMap* ck) override;
  void load(const CheckpointGet& get) override;

 private:
  std::vector<at::Tensor> exp_avg_, exp_avg_sq_;
  TrainConfig cfg_;
  bool fused_ = true;
};

class ShardedAdamW : public AdamWBase {
 public:
  // Why `reducer`'s parameters cannot be sharded ("" when they can): the reducer's own reasons,
  // or a parameter that is not contiguous (its slices would not line up with its gradient's).
  static std::string why_not(const Reducer& reducer);
  // Call once reducer.set_sharded(true) succeeded; moves the parameters into flat buffers.
  ShardedAdamW(Reducer& reducer, const TrainConfig& cfg);
  ~ShardedAdamW() override;
  std::vector<at::Tensor> grads() override;
  void reduce_norm(at::Tensor& norm, at::Tensor& found_inf) override;
  void step(double lr, const at::Tensor& found_inf) override;
  void wait() override;
  void save(TensorMap* ck) override;
  void load(const CheckpointGet& get) override;

 private:
  // The part of one parameter in this rank's slice of its bucket.
  struct Segment {
    int64_t param = 0;
    int64_t begin = 0, end = 0;   // in the parameter's elements
    at::Tensor value, grad, exp_avg, exp_avg_sq;  // views of those elements
  };
  struct Slice {
    Reducer::BucketSpan span;
    at::Tensor flat;                 // the parameters' storage, laid out as the bucket
    at::Tensor exp_avg, exp_avg_sq;  // this rank's slice only
    int64_t begin = 0, length = 0;   // the slice, in bucket elements
    std::vector<Segment> segments;
  };

  Reducer& reducer_;
  std::vector<Slice> slices_;
  // The update runs in a few groups of slices (last bucket first), each one fused AdamW call per
  // decay setting and one coalesced all-gather, which runs while the next group updates: a
  // collective per bucket would cost the host more than the update costs the GPU.
  std::vector<std::vector<size_t>> groups_;
  std::vector<c10::intrusive_ptr<::c10d::Work>> gathers_;  // in flight until wait()
  TrainConfig cfg_;
  bool fused_ = true;
};

}  // namespace nbdist::ddp
