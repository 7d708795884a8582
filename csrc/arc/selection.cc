#include "arc/selection.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace nbdist::arc {

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Stable sort of candidate indices. Units hold a handful of candidates: an insertion sort needs
// no temporary buffer, where std::stable_sort allocates one per call.
template <class Less>
void stable_sort_idx(std::vector<int32_t>* idx, Less less) {
  if (idx->size() > 32) {
    std::stable_sort(idx->begin(), idx->end(), less);
    return;
  }
  int32_t* a = idx->data();
  const size_t n = idx->size();
  for (size_t i = 1; i < n; ++i) {
    const int32_t x = a[i];
    size_t j = i;
    for (; j > 0 && less(x, a[j - 1]); --j) a[j] = a[j - 1];
    a[j] = x;
  }
}

std::vector<int32_t> order_by_score(const std::vector<double>& s) {
  std::vector<int32_t> idx(s.size());
  std::iota(idx.begin(), idx.end(), 0);
  // Stable: equal scores keep first-appearance order, which is the documented tie-break.
  stable_sort_idx(&idx, [&s](int32_t a, int32_t b) { return s[a] > s[b]; });
  return idx;
}

// Sample-weighted mean cell agreement of each candidate with the other samples of its shape.
std::vector<double> similarity_scores(const UnitCandidates& u) {
  const size_t n = u.cands.size();
  std::vector<int64_t> agree(n, 0);  // sum over same-shape candidates d of count(d) * matches
  std::vector<int64_t> shape_total(n, 0);
  for (size_t c = 0; c < n; ++c) {
    const Grid& gc = u.cands[c].grid;
    const int64_t cells = static_cast<int64_t>(gc.cells.size());
    agree[c] += static_cast<int64_t>(u.cands[c].gen_logprobs.size()) * cells;
    shape_total[c] += static_cast<int64_t>(u.cands[c].gen_logprobs.size());
    for (size_t d = c + 1; d < n; ++d) {
      const Grid& gd = u.cands[d].grid;
      if (gd.h != gc.h || gd.w != gc.w) continue;
      int64_t m = 0;
      for (size_t i = 0; i < gc.cells.size(); ++i) m += gc.cells[i] == gd.cells[i];
      agree[c] += static_cast<int64_t>(u.cands[d].gen_logprobs.size()) * m;
      agree[d] += static_cast<int64_t>(u.cands[c].gen_logprobs.size()) * m;
      shape_total[c] += static_cast<int64_t>(u.cands[d].gen_logprobs.size());
      shape_total[d] += static_cast<int64_t>(u.cands[c].gen_logprobs.size());
    }
  }
  std::vector<double> s(n, 0.0);
  for (size_t c = 0; c < n; ++c) {
    const int64_t cells = static_cast<int64_t>(u.cands[c].grid.cells.size());
    if (shape_total[c] > 1) {
      // Integer numerator and denominator, one rounding: the Python twin gets the same double.
      s[c] = static_cast<double>(agree[c] - cells) / static_cast<double>(cells * (shape_total[c] - 1));
    }
  }
  return s;
}

}  // namespace

int UnitCandidates::find(const Grid& g, uint64_t hash) const {
  for (size_t i = 0; i < cands.size(); ++i) {
    if (cands[i].hash == hash && cands[i].grid == g) return static_cast<int>(i);
  }
  return -1;
}

int UnitCandidates::add(const Grid& g, double logprob, const double* aug, size_t n_aug) {
  const uint64_t h = grid_hash(g);
  int idx = find(g, h);
  if (idx < 0) {
    idx = static_cast<int>(cands.size());
    cands.emplace_back();
    cands.back().grid = g;
    cands.back().hash = h;
  }
  add_existing(idx, logprob, aug, n_aug);
  return idx;
}

void UnitCandidates::add_existing(int idx, double logprob, const double* aug, size_t n_aug) {
  Candidate& c = cands[idx];
  c.gen_logprobs.push_back(logprob);
  c.gen_prob_sum += std::exp(logprob);
  if (aug != nullptr && !c.has_aug) {
    c.has_aug = true;
    c.aug_logprobs.assign(aug, aug + n_aug);
    for (size_t j = 0; j < n_aug; ++j) c.aug_prob_sum += std::exp(aug[j]);
  }
  sample_cand.push_back(idx);
}

void UnitCandidates::add_invalid() {
  sample_cand.push_back(-1);
  ++n_invalid;
}

std::vector<double> candidate_scores(const AlgoSpec& spec, const UnitCandidates& u) {
  const size_t n = u.cands.size();
  std::vector<double> s(n, 0.0);
  switch (spec.algo) {
    case Algo::kFirstOnly:
    case Algo::kKeepOrder:
    case Algo::kKeepOrderUnique:
      return {};
    case Algo::kVote:
      for (size_t i = 0; i < n; ++i) s[i] = static_cast<double>(u.cands[i].gen_logprobs.size());
      break;
    case Algo::kMaxGenProb:
      for (size_t i = 0; i < n; ++i) {
        double m = kNegInf;
        for (double l : u.cands[i].gen_logprobs) m = std::max(m, l);
        s[i] = m;
      }
      break;
    case Algo::kProbSum:
      for (size_t i = 0; i < n; ++i) {
        s[i] = u.cands[i].gen_prob_sum;  // the sum over exp(gen_logprobs), in order
      }
      break;
    case Algo::kMaxAugProb:
    case Algo::kMinAugProb:
    case Algo::kSumAugProb:
    case Algo::kProductOfExperts:
      for (size_t i = 0; i < n; ++i) {
        const Candidate& c = u.cands[i];
        if (!c.has_aug || c.aug_logprobs.empty()) {
          s[i] = kNegInf;
          continue;
        }
        if (spec.algo == Algo::kSumAugProb) {
          s[i] = c.aug_prob_sum;  // the sum over exp(aug_logprobs), in order
          continue;
        }
        double acc = spec.algo == Algo::kMaxAugProb   ? kNegInf
                     : spec.algo == Algo::kMinAugProb ? std::numeric_limits<double>::infinity()
                                                      : 0.0;
        for (double a : c.aug_logprobs) {
          if (spec.algo == Algo::kMaxAugProb) acc = std::max(acc, a);
          else if (spec.algo == Algo::kMinAugProb) acc = std::min(acc, a);
          else acc += a;
        }
        s[i] = acc;
      }
      break;
    case Algo::kProductOfExpertsGen:
      for (size_t i = 0; i < n; ++i) {
        const Candidate& c = u.cands[i];
        double gen = 0.0, aug = 0.0;
        for (double l : c.gen_logprobs) gen += l + spec.baseline;
        for (double a : c.aug_logprobs) aug += a + spec.baseline;
        s[i] = gen + aug;
      }
      break;
    case Algo::kSimilarity:
      s = similarity_scores(u);
      break;
  }
  return s;
}

std::vector<int32_t> rank_candidates(const AlgoSpec& spec, const UnitCandidates& u) {
  const size_t n = u.cands.size();
  switch (spec.algo) {
    case Algo::kFirstOnly:
      return n ? std::vector<int32_t>{0} : std::vector<int32_t>{};
    case Algo::kKeepOrder: {
      std::vector<int32_t> out;
      for (int32_t c : u.sample_cand) {
        if (c >= 0) out.push_back(c);
      }
      return out;
    }
    case Algo::kKeepOrderUnique: {
      std::vector<int32_t> out(n);
      std::iota(out.begin(), out.end(), 0);
      return out;
    }
    case Algo::kVote: {
      std::vector<double> best(n, kNegInf);
      for (size_t i = 0; i < n; ++i) {
        for (double l : u.cands[i].gen_logprobs) best[i] = std::max(best[i], l);
      }
      std::vector<int32_t> idx(n);
      std::iota(idx.begin(), idx.end(), 0);
      stable_sort_idx(&idx, [&](int32_t a, int32_t b) {
        const size_t na = u.cands[a].gen_logprobs.size(), nb = u.cands[b].gen_logprobs.size();
        if (na != nb) return na > nb;
        return best[a] > best[b];
      });
      return idx;
    }
    case Algo::kProbSum:
      if (spec.common_shape && n) {
        // Shape score: each distinct candidate contributes the probability of its first sample
        // (as the 2024 notebook did); the best shape wins, ties to the shape seen first.
        std::vector<std::pair<int, int>> shapes;
        std::vector<double> shape_score;
        std::vector<int> cand_shape(n);
        for (size_t i = 0; i < n; ++i) {
          std::pair<int, int> sh{u.cands[i].grid.h, u.cands[i].grid.w};
          auto it = std::find(shapes.begin(), shapes.end(), sh);
          int k = static_cast<int>(it - shapes.begin());
          if (it == shapes.end()) {
            shapes.push_back(sh);
            shape_score.push_back(0.0);
          }
          shape_score[k] += std::exp(u.cands[i].gen_logprobs[0]);
          cand_shape[i] = k;
        }
        int best_shape = 0;
        for (size_t k = 1; k < shapes.size(); ++k) {
          if (shape_score[k] > shape_score[best_shape]) best_shape = static_cast<int>(k);
        }
        const std::vector<double> s = candidate_scores(spec, u);
        std::vector<int32_t> idx(n);
        std::iota(idx.begin(), idx.end(), 0);
        stable_sort_idx(&idx, [&](int32_t a, int32_t b) {
          const bool ca = cand_shape[a] == best_shape, cb = cand_shape[b] == best_shape;
          if (ca != cb) return ca;
          return s[a] > s[b];
        });
        return idx;
      }
      return order_by_score(candidate_scores(spec, u));
    default:
      return order_by_score(candidate_scores(spec, u));
  }
}

}  // namespace nbdist::arc
