"""Pure-Python reference of nbdist.arc's C++ core, for the differential tests and the benchmark.

Deliberately plain: lists of lists, dicts, sorted(). Every floating-point operation happens in
the same order as in csrc/arc, so results must match bit for bit. Imported by path from
bench/arc_decode.py, hence no imports from the tests package.
"""

from __future__ import annotations

import math

NAMES = ["first_only", "keep_order", "keep_order_unique", "vote", "max_gen_prob", "probsum",
         "max_aug_prob", "min_aug_prob", "sum_aug_prob", "product_of_experts",
         "product_of_experts_gen", "similarity"]


# ------------------------------------------------------------------------- augmentations
def parse_suffix(suffix):
    """-> (transpose, rot, perm or None). Only what the reference decoder needs."""
    tp, rot, perm = False, 0, None
    for part in suffix.split(".")[1:]:
        if part == "tp":
            tp = True
        elif part.startswith("rot"):
            rot = int(part[3:])
        elif part.startswith("perm"):
            perm = [int(ch) for ch in part[4:]]
    return tp, rot, perm


def transpose(g):
    return [list(r) for r in zip(*g)]


def rot90(g):
    # numpy.rot90 (counter-clockwise): out[i][j] = g[j][w - 1 - i]
    h, w = len(g), len(g[0])
    return [[g[j][w - 1 - i] for j in range(h)] for i in range(w)]


def forward(g, tp, rot, perm):
    if tp:
        g = transpose(g)
    for _ in range(rot):
        g = rot90(g)
    if perm is not None:
        g = [[perm[v] for v in row] for row in g]
    return g


def inverse(g, tp, rot, perm):
    if perm is not None:
        inv = [0] * 10
        for c, to in enumerate(perm):
            inv[to] = c
        g = [[inv[v] for v in row] for row in g]
    for _ in range((4 - rot) % 4):
        g = rot90(g)
    if tp:
        g = transpose(g)
    return g


def inverse_scores(s, tp, rot, perm):
    """(h, w, 10) nested lists: cells move like a grid, channels by the inverse permutation."""
    if perm is not None:
        s = [[[cell[perm[c]] for c in range(10)] for cell in row] for row in s]
    for _ in range((4 - rot) % 4):
        s = rot90(s)
    if tp:
        s = transpose(s)
    return s


# ------------------------------------------------------------------------- text
def decode_text(text, alphabet="0123456789", row_end="\n", end_marker="."):
    if end_marker and end_marker in text:
        text = text[:text.index(end_marker)]
    if not text:
        return None
    lut = {ch: i for i, ch in enumerate(alphabet)}
    pieces = text.split(row_end)
    if pieces[-1] != "":
        return None
    rows = pieces[:-1]
    if not 1 <= len(rows) <= 30:
        return None
    w = len(rows[0])
    out = []
    for r in rows:
        if len(r) != w or not 1 <= w <= 30:
            return None
        try:
            out.append([lut[ch] for ch in r])
        except KeyError:
            return None
    return out


def valid_grid(g):
    if not isinstance(g, list) or not 1 <= len(g) <= 30:
        return False
    w = len(g[0]) if isinstance(g[0], list) else -1
    if not 1 <= w <= 30:
        return False
    return all(isinstance(r, list) and len(r) == w and
               all(type(v) is int and 0 <= v <= 9 for v in r) for r in g)


# ------------------------------------------------------------------------- decoder
class Unit:
    def __init__(self):
        self.cands = []        # [grid, [logprobs], aug or None]
        self.index = {}        # tuple(grid) -> candidate index
        self.sample_cand = []  # per sample, -1 when invalid

    def add(self, grid, logprob, aug):
        if grid is None:
            self.sample_cand.append(-1)
            return
        h = tuple(map(tuple, grid))
        c = self.index.get(h)
        if c is None:
            c = self.index[h] = len(self.cands)
            self.cands.append([grid, [], None])
        self.cands[c][1].append(logprob)
        if aug and self.cands[c][2] is None:
            self.cands[c][2] = list(aug)
        self.sample_cand.append(c)


def scores(name, unit, baseline=0.0):
    """Per-candidate scores of a score-based algorithm (None for order-based ones)."""
    cs = unit.cands
    if name in ("first_only", "keep_order", "keep_order_unique"):
        return None
    if name == "vote":
        return [float(len(c[1])) for c in cs]
    if name == "max_gen_prob":
        return [max(c[1]) for c in cs]
    if name in ("probsum", "probsum_common_shape"):
        out = []
        for c in cs:
            acc = 0.0
            for lp in c[1]:
                acc += math.exp(lp)
            out.append(acc)
        return out
    if name in ("max_aug_prob", "min_aug_prob", "sum_aug_prob", "product_of_experts"):
        out = []
        for c in cs:
            a = c[2]
            if not a:
                out.append(-math.inf)
            elif name == "max_aug_prob":
                out.append(max(a))
            elif name == "min_aug_prob":
                out.append(min(a))
            else:
                acc = 0.0
                for v in a:
                    acc += math.exp(v) if name == "sum_aug_prob" else v
                out.append(acc)
        return out
    if name == "product_of_experts_gen":
        out = []
        for c in cs:
            gen = 0.0
            for lp in c[1]:
                gen += lp + baseline
            aug = 0.0
            for v in c[2] or ():
                aug += v + baseline
            out.append(gen + aug)
        return out
    if name == "similarity":
        out = []
        for c in cs:
            g = c[0]
            cells = len(g) * len(g[0])
            agree, total = 0, 0
            for d in cs:
                if len(d[0]) != len(g) or len(d[0][0]) != len(g[0]):
                    continue
                m = sum(x == y for ra, rb in zip(g, d[0]) for x, y in zip(ra, rb))
                agree += len(d[1]) * m
                total += len(d[1])
            out.append((agree - cells) / (cells * (total - 1)) if total > 1 else 0.0)
        return out
    raise KeyError(name)


def rank(name, unit, baseline=0.0):
    cs = unit.cands
    n = len(cs)
    if name == "first_only":
        return [0] if n else []
    if name == "keep_order":
        return [c for c in unit.sample_cand if c >= 0]
    if name == "keep_order_unique":
        return list(range(n))
    if name == "vote":
        return sorted(range(n), key=lambda i: (-len(cs[i][1]), -max(cs[i][1])))
    s = scores(name, unit, baseline)
    if name == "probsum_common_shape" and n:
        shape_score = {}
        for c in cs:
            sh = (len(c[0]), len(c[0][0]))
            shape_score[sh] = shape_score.get(sh, 0.0) + math.exp(c[1][0])
        best = max(shape_score.values())
        best_shape = next(sh for sh, v in shape_score.items() if v == best)
        return sorted(range(n), key=lambda i: ((len(cs[i][0]), len(cs[i][0][0])) != best_shape,
                                               -s[i]))
    return sorted(range(n), key=lambda i: -s[i])


class Decoder:
    """The reference pipeline: parse keys, decode text, de-augment, group, rank, evaluate."""

    def __init__(self, unit_keys, n_guesses=2):
        self.units = {k: Unit() for k in unit_keys}
        self.truth = {}
        self.n_guesses = n_guesses

    def add_text(self, key, text, logprob, aug=None):
        unit, dot, rest = key.partition(".")
        g = decode_text(text)
        if g is not None and dot:
            g = inverse(g, *parse_suffix(dot + rest))
        self.units[unit].add(g, logprob, aug)

    def add_grid(self, key, grid, logprob, aug=None):
        unit, dot, rest = key.partition(".")
        g = grid if valid_grid(grid) else None
        if g is not None and dot:
            g = inverse(g, *parse_suffix(dot + rest))
        self.units[unit].add(g, logprob, aug)

    def select(self, name, baseline=0.0):
        return {k: [u.cands[c][0] for c in rank(name, u, baseline)[:self.n_guesses]]
                for k, u in self.units.items()}

    def evaluate(self, name, baseline=0.0):
        task_units, solved, solved1 = {}, {}, {}
        n_units = n_oracle = n_ranked = 0
        rank_sum = 0.0
        for k, u in self.units.items():
            if k not in self.truth:
                continue
            task = k.rpartition("_")[0]
            task_units[task] = task_units.get(task, 0) + 1
            solved.setdefault(task, 0)
            solved1.setdefault(task, 0)
            n_units += 1
            t = u.index.get(tuple(map(tuple, self.truth[k])))
            if t is None:
                continue
            n_oracle += 1
            r = rank(name, u, baseline)
            if t in r:
                pos = r.index(t)
                n_ranked += 1
                rank_sum += pos + 1
                solved[task] += pos < self.n_guesses
                solved1[task] += pos == 0
        score = score1 = 0.0
        for task, n in task_units.items():
            score += solved[task] / n
            score1 += solved1[task] / n
        return {"score": score, "score_1": score1, "n_tasks": len(task_units),
                "n_units": n_units, "n_oracle": n_oracle, "n_ranked": n_ranked,
                "rank_sum": rank_sum}
