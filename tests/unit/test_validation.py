"""particlesampling.validation: one rule and one message for the argument checks of the package and the adapter."""

import math

import numpy as np
import pytest

from particlesampling import validation
from particlesampling.validation import ArgumentTypeError, check_bool, check_choice, check_int, check_real


def test_check_int_accepts_ints_and_integral_numpy_scalars_and_refuses_bools():
    assert check_int("n", 3) == 3 and check_int("n", np.int64(4), minimum=1) == 4
    assert type(check_int("n", np.int32(2))) is int
    assert check_int("n", None, optional=True) is None
    for bad in (True, 2.0, "3", None):
        with pytest.raises(ArgumentTypeError, match=f"expected n as an int, received {bad!r}"):
            check_int("n", bad)


@pytest.mark.parametrize("minimum,text", [(0, "a non-negative int"), (1, "a positive int"), (10, "an int >= 10")])
def test_check_int_range_is_a_value_error_naming_the_bound(minimum, text):
    assert check_int("grid", minimum, minimum=minimum) == minimum
    with pytest.raises(ValueError, match=f"expected grid as {text}, received {minimum - 1}") as err:
        check_int("grid", minimum - 1, minimum=minimum)
    assert not isinstance(err.value, TypeError)
    with pytest.raises(ValueError, match=f"expected grid as {text} or None, received -100"):
        check_int("grid", -100, minimum=minimum, optional=True)


def test_a_wrong_type_is_both_a_type_error_and_a_value_error():
    """Callers written against either exception keep working after a check moved here."""
    for catch in (TypeError, ValueError):
        with pytest.raises(catch):
            check_int("seed", "0", minimum=0)
        with pytest.raises(catch):
            check_real("lr", "0.1")
        with pytest.raises(catch):
            check_bool("flag", 1)


def test_check_real_is_finite_and_bounded():
    assert check_real("w", 0, minimum=0) == 0.0 and type(check_real("w", np.float32(0.5))) is float
    with pytest.raises(ValueError, match=r"expected w > 0, received 0.0"):
        check_real("w", 0.0, minimum=0, inclusive=False)
    with pytest.raises(ValueError, match=r"expected w >= 0.5 or None, received 0.25"):
        check_real("w", 0.25, minimum=0.5, optional=True)
    for bad in (math.nan, math.inf, -math.inf, True, "1"):
        with pytest.raises(ArgumentTypeError, match="expected w as a finite real number, received"):
            check_real("w", bad)
    assert check_real("w", None, optional=True) is None


def test_check_bool_and_choice():
    assert check_bool("flag", False) is False
    with pytest.raises(ArgumentTypeError, match="expected flag as a bool, received 0"):
        check_bool("flag", 0)
    assert check_choice("method", "svgd", ("svgd", "spos")) == "svgd"
    with pytest.raises(ValueError, match=r"expected method in \('svgd', 'spos'\), received 'sgld'"):
        check_choice("method", "sgld", ["svgd", "spos"])


def test_the_checks_are_the_ones_the_package_and_the_adapter_use():
    import particlesampling as ps

    assert ps.validation is validation
    with pytest.raises(ValueError, match="expected trace_every as a positive int, received 0"):
        ps.run_sampler(None, None, 1, trace_every=0)
    torch = pytest.importorskip("torch")
    from attention_adapter import HeadRecorder, RepulsiveHeads

    model = torch.nn.MultiheadAttention(8, 2)
    with pytest.raises(ValueError, match="expected seed as a non-negative int, received -1"):
        RepulsiveHeads(model, seed=-1)
    with pytest.raises(ValueError, match="expected every as a positive int, received 0"):
        HeadRecorder(model, every=0)
