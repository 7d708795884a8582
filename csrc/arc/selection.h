#pragma once

// Candidate sets of one unit (one test output) and the selection algorithms that rank them.
// python/nbdist/arc/selection.py documents each formula; tests/arc/reference.py holds a
// pure-Python twin that must agree exactly (same floating-point operations in the same order).

#include <cstdint>
#include <vector>

#include "arc/grid.h"

namespace nbdist::arc {

// One distinct de-augmented grid of a unit and the evidence gathered for it.
struct Candidate {
  Grid grid;
  uint64_t hash = 0;
  std::vector<double> gen_logprobs;  // one per sample that produced this grid, in add order
  bool has_aug = false;
  std::vector<double> aug_logprobs;  // re-scores from the first sample that carried any
  // Running sums of exp() over the two lists, accumulated in list order as samples arrive, so
  // that probsum and sum_aug_prob cost no exp() per call and give the very same doubles.
  double gen_prob_sum = 0.0;
  double aug_prob_sum = 0.0;
};

struct UnitCandidates {
  std::vector<Candidate> cands;      // in order of first appearance
  std::vector<int32_t> sample_cand;  // per added sample: its candidate, or -1 when invalid
  int n_invalid = 0;

  // Index of the candidate equal to g, or -1.
  int find(const Grid& g, uint64_t hash) const;
  // Adds one valid sample and returns its candidate index (g is copied only when it is new).
  int add(const Grid& g, double logprob, const double* aug, size_t n_aug);
  // Adds one more sample of candidate idx (known to be its grid).
  void add_existing(int idx, double logprob, const double* aug, size_t n_aug);
  void add_invalid();
};

enum class Algo {
  kFirstOnly,
  kKeepOrder,
  kKeepOrderUnique,
  kVote,
  kMaxGenProb,
  kProbSum,
  kMaxAugProb,
  kMinAugProb,
  kSumAugProb,
  kProductOfExperts,
  kProductOfExpertsGen,
  kSimilarity,
};

struct AlgoSpec {
  Algo algo = Algo::kFirstOnly;
  bool common_shape = false;  // probsum only: candidates of the best-scoring shape come first
  double baseline = 0.0;      // product_of_experts_gen only: b = -ln(prob_baseline), in nats
};

// Per-candidate scores (higher is better) for score-based algorithms; empty for the order-based
// ones (first_only, keep_order, keep_order_unique).
std::vector<double> candidate_scores(const AlgoSpec& spec, const UnitCandidates& u);

// Candidate indices, best first. keep_order lists one entry per valid sample (repeats kept);
// every other algorithm lists each candidate at most once (first_only: just the first).
// Ties are broken by first appearance (vote: by the best generation log-prob first).
std::vector<int32_t> rank_candidates(const AlgoSpec& spec, const UnitCandidates& u);

}  // namespace nbdist::arc
