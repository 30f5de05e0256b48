"""The shared argument checks: one convention (value first, then its name; TypeError for a
wrong kind of value, ValueError for a wrong value), and what each accepts."""

import numpy as np
import pytest

from mmlm_course import audio, metrics, preprocessing
from mmlm_course.validation import (as_array, int_tuple, positive_int, require_choice, require_float, require_int,
                                    require_rank, require_rate)


def test_ints_accept_python_and_numpy_ints():
    assert positive_int(3, "units") == 3 and isinstance(positive_int(np.int64(3), "units"), int)
    assert require_int(5, "k", 1, 5) == 5


@pytest.mark.parametrize("value", [2.0, True, "2", None])
def test_ints_reject_other_kinds_with_a_type_error(value):
    for check in (lambda v: require_int(v, "k"), lambda v: positive_int(v, "k")):
        with pytest.raises(TypeError, match="k must be an int"):
            check(value)


@pytest.mark.parametrize("value, bounds, word", [(0, dict(low=1), ">= 1"), (6, dict(high=5), "<= 5")])
def test_ints_out_of_range_name_the_bound(value, bounds, word):
    with pytest.raises(ValueError, match=word):
        require_int(value, "k", **bounds)
    with pytest.raises(ValueError, match=">= 1"):
        positive_int(0, "k")


def test_floats_and_rates():
    assert require_float(1, "lr", low=0, low_open=True) == 1.0
    for bad in (0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lr"):
            require_float(bad, "lr", low=0, low_open=True)
    with pytest.raises(TypeError, match="dropout"):
        require_rate("0.1")
    with pytest.raises(ValueError, match="< 1"):
        require_rate(1.0)


def test_choices_and_int_tuples():
    assert require_choice("a", ("a", "b"), "mode") == "a"
    with pytest.raises(ValueError, match=r"mode must be one of \('a', 'b'\)"):
        require_choice(["a"], ("a", "b"), "mode")
    assert int_tuple(3, "filters") == (3,) and int_tuple([1, 2], "filters") == (1, 2)
    with pytest.raises(ValueError, match="at least one"):
        int_tuple([], "filters")
    with pytest.raises(TypeError, match="filters"):
        int_tuple("12", "filters")


def test_arrays():
    assert as_array([1.0, 2.0], "x").dtype == np.float32
    with pytest.raises(TypeError, match="None"):
        as_array(None, "x")
    with pytest.raises(TypeError, match="ragged"):
        as_array([[1, 2], [3]], "x")
    assert require_rank(np.zeros((2, 3)), (2,), "x", "(batch, time)") == (2, 3)
    with pytest.raises(ValueError, match=r"\(batch, time\)"):
        require_rank(np.zeros(3), (2,), "x", "(batch, time)")


IMAGE = np.zeros((2, 2, 3), np.uint8)


@pytest.mark.parametrize("call,error,word", [
    (lambda: preprocessing.standardize_image(IMAGE, mean=None), ValueError, "mean: expected 3 finite numbers"),
    (lambda: preprocessing.standardize_image(IMAGE, std=(0.2, 0.0, 0.2)), ValueError, "must be > 0"),
    (lambda: preprocessing.pad_sequences([[1, 2]], max_length=0), ValueError, "max_length"),
    (lambda: preprocessing.flip_caption(None), TypeError, "expected a str"),
    (lambda: audio.num_frames(1000, 400, -3), ValueError, "hop_length"),
    (lambda: metrics.accuracy(np.array([0, 1]), np.full((2, 3), np.nan, np.float32)), ValueError, "NaN"),
])
def test_bad_inputs_that_used_to_pass_silently_are_refused(call, error, word):
    with pytest.raises(error, match=word):
        call()


# Issue #16: the helpers added for the bad-input sweep.
from mmlm_course import validation as V  # noqa: E402


@pytest.mark.parametrize("call,error,word", [
    (lambda: V.require_str(None, "caption"), TypeError, "caption"),
    (lambda: V.require_str("", "caption"), ValueError, "non-empty"),
    (lambda: V.require_instance(5, dict, "config", "pass a dict"), TypeError, "pass a dict"),
    (lambda: V.require_rng("x"), TypeError, "default_rng"),
    (lambda: V.require_finite(None, "x"), TypeError, "number"),
    (lambda: V.require_finite([1.0, float("nan")], "x"), ValueError, "finite"),
    (lambda: V.require_array_budget((10**9, 10**9), 1, "size"), ValueError, "GiB"),
    (lambda: V.require_scene("scene"), TypeError, "shapeworld.Scene"),
    (lambda: V.require_relations(["sideways"]), ValueError, "relations"),
    (lambda: V.as_array(np.array(["a", "b"]), "ids"), TypeError, "strings"),
    (lambda: V.static_shape(None), TypeError, "array or tensor"),
    (lambda: V.dtype_name({"a": 1}), TypeError, "array or tensor"),
    (lambda: V.require_bool("no", "shuffle"), TypeError, "shuffle must be True or False"),
    (lambda: V.require_bool(2, "shuffle"), TypeError, "True or False"),
    (lambda: V.require_path(None), TypeError, "file path"),
    (lambda: V.require_path(b"a.png"), TypeError, "file path"),
    (lambda: V.require_path(""), ValueError, "empty"),
    (lambda: V.require_file("/", "image"), ValueError, "is a folder, not an image file"),
    (lambda: V.require_file("/no/such/file.wav", "sound"), FileNotFoundError, "No sound file"),
    (lambda: V.require_file("x" * 5000, "image"), ValueError, "cannot open"),
    (lambda: V.require_same_dtype(np.zeros(2, "float32"), np.zeros(2), "a", "b"), TypeError, "share one float dtype"),
])
def test_sweep_helpers_raise_clear_errors(call, error, word):
    with pytest.raises(error, match=word):
        call()


def test_sweep_helpers_pass_valid_values_through():
    assert V.require_str("a", "x") == "a" and V.require_str("", "x", allow_empty=True) == ""
    assert V.require_rng(None, optional=True) is None
    V.require_finite(np.arange(3.0), "x"), V.require_array_budget((64, 64, 3), 1, "x")
    assert V.require_bool(np.bool_(True), "x") is True and V.require_bool(None, "x") is False   # None reads as False
    assert V.require_bool(1, "x") is True and V.require_bool(np.int64(0), "x") is False       # 0 / 1 as flags
    assert V.require_path("a/b.png") == V.require_path(V.Path("a/b.png"))
