from __future__ import annotations

import pytest

from stream.deploy.state import (
    DeploymentState,
    Router,
    Weighted,
    initial_state,
)
from stream.errors import SettingsError
from stream.models.key import ModelKey

V1 = ModelKey(name="m", version="1")
V2 = ModelKey(name="m", version="2")
V3 = ModelKey(name="m", version="3")


def test_ab_split_90_10_over_20k_keys_is_sticky() -> None:
    state = initial_state("p", V1).deploy(V2, weight=10)
    router = Router(state.current)
    keys = [f"customer-{i}".encode() for i in range(20_000)]
    first = [router.route(k, {})[0] for k in keys]
    share = first.count(V2) / len(keys)
    print(f"\nA/B 90/10 over 20,000 keys: {100 * share:.2f}% challenger")
    assert abs(share - 0.10) <= 0.02
    again = Router(state.current)
    assert [again.route(k, {})[0] for k in keys] == first, "a key's variant never changes"
    assert router.route(keys[0], {})[1] in ("champion", "challenger")


def test_deploy_replaces_weights_and_keeps_history() -> None:
    state = initial_state("p", V1)
    assert state.current.revision == 0
    state = state.deploy(V2, weight=10)
    assert [(w.model, round(w.weight)) for w in state.current.serving] == [(V1, 90), (V2, 10)]
    state = state.deploy(V3, weight=20)
    assert [(w.model, round(w.weight)) for w in state.current.serving] == [
        (V1, 72),
        (V2, 8),
        (V3, 20),
    ]
    state = state.deploy(V3)
    assert state.current.serving == [Weighted(model=V3, weight=100)]
    assert state.current.revision == 3
    assert [s.revision for s in state.history] == [2, 1, 0]


def test_rollback_restores_the_previous_state_as_a_new_revision() -> None:
    before = initial_state("p", V1).deploy(V2, shadow=True)
    after = before.deploy(V2)
    rolled = after.rollback()
    assert rolled.current.serving == before.current.serving
    assert rolled.current.shadows == [V2]
    assert rolled.current.revision == 3
    assert rolled.current.change == "rollback to revision 1"
    with pytest.raises(SettingsError, match="no earlier deployment"):
        initial_state("p", V1).rollback()


def test_undeploy() -> None:
    state = initial_state("p", V1).deploy(V2, weight=50).deploy(V3, shadow=True)
    state = state.undeploy(V3).undeploy(V2)
    assert state.current.models() == {V1}
    with pytest.raises(SettingsError, match="only serving version"):
        state.undeploy(V1)
    with pytest.raises(SettingsError, match="does not serve"):
        state.deploy(V2, shadow=True).undeploy(V3)


def test_rules_first_match_then_weights() -> None:
    state = initial_state("p", V1).deploy(V2, route=("country", "DE"))
    state = state.deploy(V3, route=("channel", "web"))
    router = Router(state.current)
    assert router.route(b"k", {"country": "DE", "channel": "web"}) == (V2, "rule:country=DE")
    assert router.route(b"k", {"country": "FR", "channel": "web"}) == (V3, "rule:channel=web")
    assert router.route(b"k", {"country": "FR"}) == (V1, "champion")


def test_bad_changes_are_refused() -> None:
    state = initial_state("p", V1)
    with pytest.raises(SettingsError, match="only serving version"):
        state.deploy(V1, weight=10)
    with pytest.raises(SettingsError, match="between 0 and 100"):
        state.deploy(V2, weight=-5)
    with pytest.raises(SettingsError, match="already shadows"):
        state.deploy(V2, shadow=True).deploy(V2, shadow=True)
    with pytest.raises(SettingsError, match="NAME:VERSION"):
        ModelKey.parse("no-version")


def test_state_round_trips_through_json() -> None:
    state = initial_state("p", V1).deploy(V2, weight=10).deploy(V3, shadow=True)
    assert DeploymentState.model_validate_json(state.model_dump_json()) == state
    assert "shadow m:3" in state.current.describe()
