"""Property-based tests (hypothesis) of every parser that takes text from outside: weights, shots,
seeds, sources, task names, run ids and manifest entries. Each either returns a value that
satisfies its contract or raises ``ValueError`` with a one-line message, for any input."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pitune_core.common import (
    TASK_NAME_PATTERN,
    check_task_name,
    parse_int_list,
    parse_shots,
    parse_shots_list,
    parse_sources,
)
from pitune_core.study.verify import (
    ManifestError,
    confined_path,
    read_manifest,
    verify_study,
)
from pitune_core.tune.weights import (
    InterpolationError,
    initial_logits,
    initial_weights,
    normalise_weights,
    parse_weights,
)

SETTINGS = settings(max_examples=200, deadline=None, database=None,  # no .hypothesis/ folder in the repo
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
task_names = st.from_regex(rf"\A{TASK_NAME_PATTERN}\Z")
weights_lists = st.lists(st.floats(min_value=0, max_value=1e308, allow_nan=False), min_size=1, max_size=8).filter(
    lambda w: max(w) > 0)


def _one_line(e: BaseException) -> None:
    assert str(e) and "\n" not in str(e)


# ----------------------------------------------------------------------------- weights

@SETTINGS
@given(weights_lists)
def test_normalised_weights_sum_to_one_and_keep_ratios(w):
    n = normalise_weights(w)
    assert all(math.isfinite(x) and x >= 0 for x in n)
    assert math.fsum(n) == pytest.approx(1.0, abs=1e-12)
    top = max(range(len(w)), key=lambda i: w[i])
    assert n[top] == max(n)  # the largest weight stays the largest (no overflow to uniform)


@SETTINGS
@given(weights_lists, st.sampled_from(["uniform", "auto", "list"]))
def test_initial_weights_are_the_softmax_of_the_initial_logits(w, mode):
    spec = w if mode == "list" else mode
    sims = [min(1.0, x / 1e308) for x in w]
    got = initial_weights(spec, sims)
    logits = initial_logits(spec, sims, len(w))
    e = [math.exp(x - max(logits)) for x in logits]
    assert got == pytest.approx([x / math.fsum(e) for x in e], rel=1e-9, abs=1e-12)
    assert math.fsum(got) == pytest.approx(1.0, abs=1e-12)


@SETTINGS
@given(st.text(max_size=60), st.integers(min_value=1, max_value=6))
def test_parse_weights_accepts_or_explains_any_text(text, k):
    try:
        w = parse_weights(text, k)
    except InterpolationError as e:
        _one_line(e)
        return
    if isinstance(w, str):
        assert w in ("uniform", "auto")
    else:
        assert len(w) == k and all(math.isfinite(x) and x >= 0 for x in w) and max(w) > 0


@SETTINGS
@given(st.lists(st.one_of(st.floats(), st.integers(), st.text(max_size=5), st.none(), st.booleans()), max_size=5))
def test_parse_weights_rejects_non_numbers_cleanly(values):
    try:
        w = parse_weights(values, len(values))
    except InterpolationError as e:
        _one_line(e)
        return
    assert all(isinstance(x, float) and math.isfinite(x) and x >= 0 for x in w)


# ----------------------------------------------------------------------------- shots, seeds

@SETTINGS
@given(st.one_of(st.text(max_size=20), st.integers(), st.none(), st.booleans(), st.floats()))
def test_parse_shots_any_value(value):
    try:
        s = parse_shots(value)
    except ValueError as e:
        _one_line(e)
        assert "invalid literal" not in str(e)
        return
    if s is None:  # only the spellings of "all the data" mean full data
        assert value is None or (isinstance(value, str) and value.strip().lower() in ("", "full", "none", "all"))
    else:  # a number is that number
        assert isinstance(s, int) and not isinstance(s, bool) and s >= 1 and s == int(str(value).strip())


@SETTINGS
@given(st.integers(min_value=1, max_value=10**9), st.sampled_from(["{}", " {} ", "{}\n", "+{}"]))
def test_parse_shots_reads_every_whole_number_back(n, spelling):
    assert parse_shots(n) == n and parse_shots(spelling.format(n)) == n
    assert parse_shots_list(f"{n},full,{n}") == [n, None, n]


@SETTINGS
@given(st.integers(max_value=0))
def test_parse_shots_refuses_zero_and_negative_counts(n):
    for value in (n, str(n)):
        with pytest.raises(ValueError, match="shots must be at least 1"):
            parse_shots(value)


@SETTINGS
@given(st.text(max_size=40))
def test_parse_shots_list_and_int_list_any_text(text):
    for parse in (parse_shots_list, lambda t: parse_int_list(t, "seeds")):
        try:
            out = parse(text)
        except ValueError as e:
            _one_line(e)
            assert "invalid literal" not in str(e)
            continue
        assert out and all(x is None or isinstance(x, int) for x in out)


@SETTINGS
@given(st.lists(st.integers(min_value=-10**6, max_value=10**6), min_size=1, max_size=6))
def test_parse_int_list_round_trips(values):
    assert parse_int_list(",".join(map(str, values))) == values


# ----------------------------------------------------------------------------- task names, sources

@SETTINGS
@given(st.text(max_size=80))
def test_check_task_name_is_exactly_the_identifier_rule(text):
    ok = re.fullmatch(TASK_NAME_PATTERN, text) is not None
    try:
        assert check_task_name(text) == text and ok
        assert not set(text) & set("/\\.<>&\"' \n\x00:")
    except ValueError as e:
        assert not ok
        _one_line(e)


@SETTINGS
@given(st.lists(task_names, min_size=1, max_size=6))
def test_parse_sources_valid_lists(names):
    try:
        out = parse_sources(",".join(names))
    except ValueError as e:
        assert len(set(names)) < len(names) and "more than once" in str(e)
        return
    assert out == names and len(set(out)) == len(out)
    assert parse_sources(",".join(names), k=len(names)) == names
    with pytest.raises(ValueError, match="sources were named"):
        parse_sources(",".join(names), k=len(names) + 1)


@SETTINGS
@given(st.text(max_size=80))
def test_parse_sources_any_text(text):
    try:
        out = parse_sources(text)
    except ValueError as e:
        _one_line(e)
        return
    assert out is None or all(re.fullmatch(TASK_NAME_PATTERN, n) for n in out)


# ----------------------------------------------------------------------------- run ids

@SETTINGS
@given(st.text(max_size=40))
def test_run_ids_are_validated(text):
    from pitune_core.runs.registry import is_valid_run_id, new_run_id

    if is_valid_run_id(text):
        assert re.fullmatch(r"[0-9a-f-]+", text) and "/" not in text and ".." not in text
    assert is_valid_run_id(new_run_id())


# ----------------------------------------------------------------------------- manifest entries

@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    r = tmp_path_factory.mktemp("confine") / "study"
    (r / "sub").mkdir(parents=True)
    (r / "sub" / "f.txt").write_text("x")
    (r / "manifest.json").write_text("{}")
    return r


@SETTINGS
@given(st.one_of(st.text(max_size=60), st.from_regex(r"\A(\.\./|/|sub/|\./)*[a-z./]{0,12}\Z"), st.integers(),
                 st.none()))
def test_confined_path_never_leaves_the_root(root, rel):
    try:
        p = confined_path(root, rel)
    except ManifestError as e:
        _one_line(e)
        return
    real = Path(os.path.realpath(p))
    assert real == root.resolve() or real.is_relative_to(root.resolve())


json_values = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=10),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                           max_leaves=12)


@SETTINGS
@given(st.one_of(json_values, st.fixed_dictionaries({"files": json_values}),
                 st.fixed_dictionaries({"files": st.dictionaries(st.text(max_size=30), json_values, max_size=4)})))
def test_any_manifest_is_read_or_refused_in_one_line(tmp_path_factory, manifest):
    r = tmp_path_factory.mktemp("m")
    (r / "manifest.json").write_text(json.dumps(manifest))
    try:
        m = read_manifest(r)
    except ManifestError as e:
        _one_line(e)
    else:
        assert isinstance(m, dict) and isinstance(m["files"], dict)
        assert all(re.fullmatch(r"[0-9a-f]{64}", d) for d in m["files"].values())
    problems = verify_study(r, load_experts=False)  # never raises, never hangs
    assume(problems)
    assert all(isinstance(p, str) for p in problems)


# ----------------------------------------------------------------------------- issue 29: uploads and what is drawn

def _tiny_image(fmt: str) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (6, 5), (200, 10, 10)).save(buf, fmt)
    return buf.getvalue()


IMAGE_FORMATS = ["PNG", "TIFF", "GIF", "BMP", "JPEG", "WEBP"]


@SETTINGS
@given(st.sampled_from(IMAGE_FORMATS), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
       st.integers(0, 10**6))
def test_any_mutated_image_decodes_or_is_one_user_error(fmt, edits, cut):
    """Fuzzed files (bytes changed, then cut) decode or give one UserTaskError line: Pillow's own
    TypeError / OverflowError / struct.error never leak (issue 29 #7)."""
    from pitune_core.data import user_tasks as U

    blob = bytearray(_tiny_image(fmt))
    for pos, value in edits:
        blob[pos % len(blob)] = value
    blob = bytes(blob[: max(1, cut % (len(blob) + 1))])
    try:
        ext, arr = U.decode_image(blob, "x")
        assert arr.shape == (U.IMAGE_SIZE, U.IMAGE_SIZE, 3) and ext in U.FORMAT_EXT.values()
    except U.UserTaskError as e:
        assert "\n" not in str(e)


@SETTINGS
@given(st.text(max_size=200))
def test_any_text_reads_as_records_or_one_user_error(text):
    """CSV / JSONL of any text (unclosed quotes, deep nesting, control characters): records with
    string labels free of control characters, or one UserTaskError line (issue 29 #7, #10, #11)."""
    from pitune_core.common import has_control
    from pitune_core.data import user_tasks as U

    cols = {"text": ("text", "--text-column"), "label": ("label", "--label-column")}
    for name in ("x.csv", "x.jsonl"):
        try:
            rows = U.read_records(("text,label\n" if name == "x.csv" else "") .encode() + text.encode(), name, cols)
        except U.UserTaskError as e:
            assert "\n" not in str(e)
            continue
        for _, r in rows:
            assert isinstance(r["label"], str) and r["label"] and not has_control(r["label"])


@SETTINGS
@given(st.text(max_size=120))
def test_printed_and_drawn_strings_carry_no_control_characters_or_links(text):
    """Whatever a label holds: printable() has no control character and is one line; md() makes no
    link (every ':' and '@' escaped), no markup (issue 29 #10)."""
    from dashboard.text import md
    from pitune_core.common import printable

    p = printable(text)
    assert "\n" not in p and not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in p)
    m = md(text)
    assert not re.search(r"(?<!\\)(?:\\\\)*[:@<>\[\]]", m.replace("\\\\", "")), m


@SETTINGS
@given(st.lists(st.integers(1, 200), max_size=300), st.integers(1, 5000), st.integers(1, 64))
def test_fisher_chunks_cover_every_example_once_within_the_budgets(lengths, label_tokens, chunk_size):
    """Per-example gradients in chunks: every example once, at most chunk_size examples, and at most
    4096 label tokens per chunk unless one example alone holds more (a 100-class task used to put
    ~40 examples x 800 label tokens in one chunk: 5 GB)."""
    import numpy as np

    from pitune_core.predict.embeddings import fisher_chunks

    chunks = fisher_chunks(np.array(lengths, dtype=int), label_tokens, chunk_size=chunk_size)
    flat = sorted(int(i) for c in chunks for i in c)
    assert flat == list(range(len(lengths)))
    for c in chunks:
        assert 1 <= len(c) <= chunk_size
        assert len(c) == 1 or len(c) * label_tokens <= 4096
