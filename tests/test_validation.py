"""The shared argument checks: what they accept, and the errors they give for the rest."""

import numpy as np
import pytest

from mmlm_course.validation import dtype_name, positive_int, require_int, static_shape


def test_positive_int_accepts_python_and_numpy_ints():
    assert positive_int(3, "units") == 3 and isinstance(positive_int(np.int64(3), "units"), int)


@pytest.mark.parametrize("value", [0, -2, 2.0, True, "3", None])
def test_positive_int_names_the_argument_and_the_value(value):
    with pytest.raises(ValueError, match=f"units must be a positive int, got {value!r}"):
        positive_int(value, "units")


def test_require_int_bounds():
    assert require_int("k", 5, 1, 5) == 5
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        require_int("k", 0, 1)
    with pytest.raises(ValueError, match="k must be <= 5, got 6"):
        require_int("k", 6, high=5)


@pytest.mark.parametrize("value", [2.0, True, "2"])
def test_require_int_rejects_non_ints_with_a_type_error(value):
    with pytest.raises(TypeError, match=f"k must be a Python int, got {type(value).__name__}"):
        require_int("k", value)


def test_dtype_name_and_static_shape():
    x = np.zeros((2, 3), np.float32)
    assert dtype_name(x) == "float32" and static_shape(x) == (2, 3)
