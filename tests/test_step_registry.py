"""Step kinds are a registry: every kind the spec model accepts has exactly one handler, and a
kind without one is answered with the kinds that exist."""
from __future__ import annotations

import pytest

from nurture.spec.models import STEP_KINDS
from nurture.steps.advance import STEP_HANDLERS, UnknownStepKind, handler_for


def test_every_step_kind_of_the_spec_has_a_handler_and_no_handler_is_for_an_unknown_kind():
    assert set(STEP_HANDLERS) == set(STEP_KINDS)


@pytest.mark.parametrize("kind", STEP_KINDS)
def test_each_kind_is_handled_by_its_own_module(kind):
    assert handler_for(kind).__module__ == f"nurture.steps.{kind}"


def test_an_unknown_step_kind_is_answered_with_the_known_ones():
    with pytest.raises(UnknownStepKind) as err:
        handler_for("sleep")
    assert "'sleep'" in str(err.value)
    assert all(kind in str(err.value) for kind in STEP_KINDS)
