"""Augmentations: exact inverses on every real grid, agreement with the Python reference."""

import random

import pytest

import nbdist
from nbdist.arc import DIHEDRAL, ArcDataset, Augmentation, augment, split_key
from nbdist.arc._grids import pack, unpack
from nbdist.arc.dataset import iter_grids


def _all_grids(arc_data):
    grids = []
    for version in ("arc-agi-1", "arc-agi-2"):
        for split in ("training", "evaluation"):
            grids += list(iter_grids(ArcDataset.from_dir(arc_data / version / split)))
    return grids


@pytest.fixture(scope="module")
def every_grid(arc_data):
    return _all_grids(arc_data)


def test_every_arc_grid_round_trips_under_every_dihedral_transform_and_colour_perm(every_grid):
    assert len(every_grid) > 10000
    cells, shapes = pack(every_grid)
    rng = random.Random(0)
    for d in range(8):
        for keep_bg in (True, False):
            perm = Augmentation.random(rng, keep_background=keep_bg).perm
            aug = Augmentation(d >= 4, d % 4, perm)
            fwd = aug.apply_packed(cells, shapes)
            assert aug.invert_packed(*fwd) == (cells, shapes), aug.suffix
            # A non-identity transform really moves or recolours something.
            assert fwd != (cells, shapes)
    # The list-of-lists API agrees with the packed one.
    aug = Augmentation(True, 3, Augmentation.random(rng).perm)
    assert pack(aug.apply_grids(every_grid)) == aug.apply_packed(cells, shapes)
    assert aug.invert_grids(aug.apply_grids(every_grid)) == every_grid


def test_score_arrays_of_real_grids_invert_exactly_under_every_transform(arc_data):
    # Per-cell score arrays shaped like every evaluation grid of ARC-AGI-1 and -2: one score per
    # cell (the cell's colour plus a position-dependent fraction, so every value is distinct),
    # and, for a sample, one-hot colour channels that must follow the colour permutation.
    np = pytest.importorskip("numpy")
    grids = []
    for version in ("arc-agi-1", "arc-agi-2"):
        grids += list(iter_grids(ArcDataset.from_dir(arc_data / version / "evaluation")))
    rng = random.Random(4)
    for i, g in enumerate(grids):
        a = np.array(g, dtype=np.float64)
        a = a + np.arange(a.size).reshape(a.shape) / (a.size + 1)
        d = i % 8
        aug = Augmentation(d >= 4, d % 4, Augmentation.random(rng).perm)
        moved = aug.apply_scores(a)
        # One channel: cells move like the grid, values keep their colour (no recolouring).
        assert np.array_equal(np.floor(moved), np.array(DIHEDRAL[d].apply_grid(g)))
        assert np.array_equal(aug.invert_scores(moved), a)
        if i % 25 == 0:
            onehot = np.eye(10)[np.array(g)]
            fwd = aug.apply_scores(onehot)
            assert (fwd.argmax(-1) == np.array(aug.apply_grid(g))).all()
            assert np.array_equal(aug.invert_scores(fwd), onehot)


def test_transforms_match_the_python_reference_on_random_grids(ref):
    rng = random.Random(1)
    for _ in range(300):
        h, w = rng.randint(1, 30), rng.randint(1, 30)
        g = [[rng.randrange(10) for _ in range(w)] for _ in range(h)]
        aug = Augmentation.random(rng, keep_background=rng.random() < 0.5)
        expect = ref.forward(g, aug.transpose, aug.rot, list(aug.perm))
        assert aug.apply_grid(g) == expect
        assert aug.invert_grid(expect) == g
        assert ref.inverse(expect, aug.transpose, aug.rot, list(aug.perm)) == g


def test_dihedral_group_has_eight_distinct_members_matching_numpy():
    np = pytest.importorskip("numpy")
    g = np.arange(6).reshape(2, 3) % 10
    outs = set()
    for d, aug in enumerate(DIHEDRAL):
        expect = np.rot90(g.T if d >= 4 else g, d % 4)
        got = np.array(aug.apply_grid(g.tolist()))
        assert (got == expect).all(), aug.suffix
        outs.add(got.tobytes() + bytes(got.shape))
    assert len(outs) == 8


def test_per_cell_score_arrays_invert_exactly(ref):
    np = pytest.importorskip("numpy")
    rng = random.Random(2)
    nprng = np.random.default_rng(2)
    for _ in range(100):
        h, w = rng.randint(1, 12), rng.randint(1, 12)
        aug = Augmentation.random(rng, keep_background=False)
        grid = nprng.integers(0, 10, (h, w))
        scores = nprng.standard_normal((h, w, 10))
        # Scores follow their cells: the argmax channel of the moved array is the moved grid.
        onehot = np.eye(10)[grid] + 0.0
        moved = aug.apply_scores(onehot)
        assert (moved.argmax(-1) == np.array(aug.apply_grid(grid.tolist()))).all()
        assert np.array_equal(aug.invert_scores(aug.apply_scores(scores)), scores)
        assert np.array_equal(
            aug.invert_scores(scores),
            np.array(ref.inverse_scores(scores.tolist(), aug.transpose, aug.rot, list(aug.perm))))
        flat = nprng.standard_normal((h, w))
        assert np.array_equal(aug.invert_scores(aug.apply_scores(flat)), flat)
    # Nested lists work too (no numpy needed by callers).
    s = [[0.5, 1.5, 2.5]]
    assert Augmentation(True).apply_scores(s) == [[0.5], [1.5], [2.5]]


def test_suffix_round_trip_and_key_split():
    aug = Augmentation(True, 3, (0, 2, 1, 3, 4, 5, 6, 7, 8, 9), (2, 0, 1))
    assert aug.suffix == ".tp.rot3.perm0213456789.ex2-0-1"
    assert Augmentation.from_suffix(aug.suffix) == aug
    unit, parsed = split_key("00576224_0" + aug.suffix)
    assert unit == "00576224_0" and parsed == aug
    assert Augmentation().suffix == "" and split_key("abc_1") == ("abc_1", Augmentation())


@pytest.mark.parametrize("suffix, fragment", [
    ("tp", "must start with '.'"),
    (".rot4", "unknown part 'rot4'"),
    (".perm0123", "10 digits"),
    (".perm0023456789", "not a permutation"),
    (".ex0-2", "not a permutation of 0..1"),
    (".tp.tp", "'tp' appears twice"),
])
def test_bad_suffixes_are_rejected_with_the_part_named(suffix, fragment):
    with pytest.raises(nbdist.ArcValueError, match=fragment):
        Augmentation.from_suffix(suffix)


def test_augment_task_reorders_train_and_transforms_every_grid(arc_data):
    ds = ArcDataset.from_dir(arc_data / "arc-agi-1" / "evaluation")
    task = ds.tasks["00576224"]
    aug = Augmentation(False, 1, None, (1, 0))
    out = augment(task, aug.suffix)
    assert out["train"][0]["input"] == aug.apply_grid(task["train"][1]["input"])
    assert out["test"][0]["output"] == aug.apply_grid(task["test"][0]["output"])
    with pytest.raises(nbdist.ArcValueError, match="orders 3 train pairs, the task has 2"):
        augment(task, Augmentation(example_order=(0, 2, 1)))


def test_pack_unpack_round_trip():
    grids = [[[1, 2], [3, 4]], [[9]]]
    assert unpack(*pack(grids)) == grids


def test_ragged_or_out_of_range_grids_are_refused_not_rearranged():
    # Two ragged grids whose cell counts add up used to come back silently rearranged.
    aug = Augmentation(True, 1)
    with pytest.raises(nbdist.ArcValueError, match=r"grids\[0\] row 1 has 2 cells"):
        aug.apply_grids([[[1], [2, 3]], [[4, 5], [6]]])
    with pytest.raises(nbdist.ArcValueError, match=r"grids\[1\] cell \[0\]\[0\] is 200"):
        Augmentation(perm=(0, 2, 1, 3, 4, 5, 6, 7, 8, 9)).invert_grids([[[1]], [[200]]])
    task = {"train": [{"input": [[1]], "output": [[1]]}, {"input": [[1], [2, 3]],
                                                          "output": [[4, 5], [6]]}],
            "test": [{"input": [[1]]}]}
    with pytest.raises(nbdist.ArcValueError, match=r"task: train\[1\].input row 1 has 2"):
        augment(task, ".rot1.ex1-0")


@pytest.mark.parametrize("kwargs, fragment", [
    ({"rot": 1.5}, "rot must be an int 0..3, got 1.5"),
    ({"perm": (256, 1, 2, 3, 4, 5, 6, 7, 8, 9)}, "perm must be a permutation of 0..9"),
    ({"perm": (0.0, 1, 2, 3, 4, 5, 6, 7, 8, 9)}, "perm must be a permutation of 0..9"),
    ({"example_order": (2**40,)}, "example_order must be a permutation"),
])
def test_augmentation_fields_the_suffix_cannot_hold_are_refused(kwargs, fragment):
    # rot 1.5 used to become rot1 and perm 256 the identity, silently.
    with pytest.raises(nbdist.ArcValueError, match=fragment):
        Augmentation(**kwargs)


def test_ragged_score_arrays_are_refused():
    # 2 + 1 + 3 values fill a (3, 2) array: this used to pass and come back rearranged.
    with pytest.raises(nbdist.ArcValueError, match="score array row 1 is not shaped like row 0"):
        Augmentation(True).apply_scores([[1.0, 2.0], [3.0], [4.0, 5.0, 6.0]])
    with pytest.raises(nbdist.ArcValueError, match="row 0 is not shaped like row 0 .2 cells of"):
        Augmentation(True).invert_scores([[[0.0] * 10, 2.0]])
