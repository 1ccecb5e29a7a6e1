"""Ray hygiene for tfcluster's runs: Ray Train's placement-group cleaner never tears down a live run
because the State API did not answer."""

import logging
from types import SimpleNamespace

from tfcluster import quiet


def test_an_unanswered_state_query_counts_as_alive(monkeypatch):
    from ray.train.v2._internal.execution.controller import placement_group_cleaner as pgc
    from ray.train.v2._internal.state import util as state_util

    monkeypatch.setattr(pgc, "is_actor_alive", pgc.is_actor_alive)  # restored after the test
    answers = {"miss": None, "alive": SimpleNamespace(state="ALIVE"), "dead": SimpleNamespace(state="DEAD")}
    monkeypatch.setattr(state_util, "get_actor", lambda actor_id, timeout: answers[actor_id])
    assert not state_util.is_actor_alive("miss", 1)  # Ray's own reading: a miss is a death
    assert quiet.guard_placement_group_cleaner()
    assert pgc.is_actor_alive("miss", 1) and pgc.is_actor_alive("alive", 1)
    assert not pgc.is_actor_alive("dead", 1)  # a controller that really died is still cleaned up


def test_the_state_api_warning_is_dropped_and_the_cleanup_line_kept(caplog):
    from ray.train.v2._internal.execution.controller import placement_group_cleaner as pgc

    quiet.guard_placement_group_cleaner()
    log = logging.getLogger(pgc.__name__)
    with caplog.at_level(logging.WARNING, logger=pgc.__name__):
        log.warning("Failed to query Ray Train Controller actor state. State API may be temporarily unavailable.")
        log.warning("Detected that the Ray Train controller actor (x) is dead. Cleaning up placement group")
    assert [r.getMessage()[:8] for r in caplog.records] == ["Detected"]


def test_the_guard_asks_the_gcs_of_its_own_cluster(ray_local, monkeypatch):
    """On a live cluster the guard reads the actor table of the GCS it is connected to (no State API
    guess of which cluster on the machine): a live actor is alive, a killed one dead."""
    import time

    import ray
    from ray.train.v2._internal.execution.controller import placement_group_cleaner as pgc
    from ray.train.v2._internal.state import util as state_util

    monkeypatch.setattr(pgc, "is_actor_alive", pgc.is_actor_alive)

    def no_state_api(actor_id, timeout):
        raise AssertionError("the State API was asked")

    monkeypatch.setattr(state_util, "get_actor", no_state_api)
    quiet.guard_placement_group_cleaner()

    @ray.remote(num_cpus=0)
    class Controller:
        def ping(self):
            return 1

    actor = Controller.remote()
    ray.get(actor.ping.remote())
    actor_id = actor._actor_id.hex()
    assert pgc.is_actor_alive(actor_id, 1)
    ray.kill(actor)
    deadline = time.time() + 30
    while pgc.is_actor_alive(actor_id, 1) and time.time() < deadline:
        time.sleep(0.2)
    assert not pgc.is_actor_alive(actor_id, 1)
