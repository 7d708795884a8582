"""GridFormatter: round-trips on all of ARC-AGI-1, invalid text counted, reference agreement."""

import random

import pytest

import nbdist
from nbdist.arc import ArcDataset, GridFormatter
from nbdist.arc.dataset import iter_grids


@pytest.fixture(scope="module")
def arc1(arc_data):
    return [ArcDataset.from_dir(arc_data / "arc-agi-1" / s) for s in ("training", "evaluation")]


@pytest.mark.parametrize("fmt", [
    GridFormatter(),
    GridFormatter(alphabet="abcdefghij", row_end="|\n", input_marker="<in>",
                  output_marker="<out>", end_marker="<eos>"),
])
def test_every_arc1_task_round_trips_through_prompt_and_reply(arc1, fmt):
    n = 0
    for ds in arc1:
        for task in ds.tasks.values():
            for i, test in enumerate(task["test"]):
                prompt, reply = fmt.fmt_task(task, i)
                back = fmt.parse_query(prompt + reply)
                assert back["train"] == task["train"]
                assert back["test"] == [test]
                assert fmt.decode(reply) == test["output"]
                n += 1
        grids = list(iter_grids(ds))
        replies = fmt.fmt_replies(grids)
        assert replies[:50] == [fmt.fmt_reply(g) for g in grids[:50]]
        decoded, counts = fmt.decode_many(replies)
        assert decoded == grids and counts == {"ok": len(grids)}
    assert n > 800


def test_invalid_replies_are_counted_not_raised():
    fmt = GridFormatter()
    texts = {
        "": "empty",
        ".": "empty",
        "\n": "empty",
        "12\n3\n": "ragged",
        "12\n34": "unterminated_row",
        "1a\n": "bad_symbol",
        ("1" * 31) + "\n": "too_large",
        "1\n" * 31: "too_large",
        "12\n34\n.garbage": "ok",
    }
    grids, counts = fmt.decode_many(list(texts))
    expected = {}
    for reason in texts.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert counts == expected
    assert grids[-1] == [[1, 2], [3, 4]]
    assert all(g is None for g in grids[:-1])


def test_decoding_matches_the_python_reference_on_random_text(ref):
    rng = random.Random(3)
    fmt = GridFormatter()
    symbols = "0123456789\n\n\n.x "
    texts = []
    for _ in range(3000):
        if rng.random() < 0.5:
            h, w = rng.randint(1, 4), rng.randint(1, 4)
            t = "".join("".join(rng.choice("0123456789") for _ in range(w)) + "\n"
                        for _ in range(h))
            if rng.random() < 0.5:  # corrupt one character
                i = rng.randrange(len(t))
                t = t[:i] + rng.choice(symbols) + t[i + 1:]
        else:
            t = "".join(rng.choice(symbols) for _ in range(rng.randint(0, 12)))
        texts.append(t)
    grids, _ = fmt.decode_many(texts)
    assert grids == [ref.decode_text(t) for t in texts]
    assert sum(g is not None for g in grids) > 500


@pytest.mark.parametrize("alphabet", ["0123456789", "abcdefghij", "0123456798"])
def test_decoding_wide_rows_matches_the_python_reference(ref, alphabet):
    # Rows of known width are checked 16 bytes at a time when the alphabet is ten consecutive
    # bytes in order (the first two here); symbols just outside that range, a misplaced row
    # end and an early end marker must all be caught exactly as the reference does.
    rng = random.Random(len(alphabet) + ord(alphabet[-1]))
    fmt = GridFormatter(alphabet=alphabet)
    lo, hi = chr(ord(min(alphabet)) - 1), chr(ord(max(alphabet)) + 1)
    texts = []
    for _ in range(1500):
        h, w = rng.randint(1, 30), rng.randint(1, 30)
        rows = ["".join(rng.choice(alphabet) for _ in range(w)) for _ in range(h)]
        t = "".join(r + "\n" for r in rows) + fmt.end_marker
        if rng.random() < 0.6:
            i = rng.randrange(len(t))
            t = t[:i] + rng.choice([lo, hi, "\n", "x", fmt.end_marker or "\n", ""]) + t[i + 1:]
        if rng.random() < 0.1:
            t = t + rng.choice(alphabet) * rng.randint(1, 40) + "\n"
        texts.append(t)
    grids, _ = fmt.decode_many(texts)
    assert grids == [ref.decode_text(t, alphabet, "\n", fmt.end_marker) for t in texts]
    assert 300 < sum(g is not None for g in grids) < 1400


def test_bad_formatter_configs_are_rejected():
    with pytest.raises(nbdist.ArcValueError, match="alphabet"):
        GridFormatter(alphabet="012345678")
    with pytest.raises(nbdist.ArcValueError, match="end_marker"):
        GridFormatter(end_marker="1")
    with pytest.raises(nbdist.ArcValueError, match="markers must differ"):
        GridFormatter(input_marker="X", output_marker="X")


def test_parse_query_names_the_broken_part():
    fmt = GridFormatter()
    with pytest.raises(nbdist.ArcValueError, match="pair 0 input: not a valid grid"):
        fmt.parse_query("I12\n3\nO")


def test_texts_that_are_not_str_are_named():
    fmt = GridFormatter()
    with pytest.raises(nbdist.ArcValueError, match="text is a NoneType, not a str"):
        fmt.decode(None)
    with pytest.raises(nbdist.ArcValueError, match=r"texts\[1\] is a NoneType, not a str"):
        fmt.decode_many(["1\n", None])
    with pytest.raises(nbdist.ArcValueError, match="alphabet must be 10 distinct ASCII"):
        GridFormatter(alphabet=list("0123456789"))
