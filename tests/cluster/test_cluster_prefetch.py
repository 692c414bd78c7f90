"""The likely next machine keeps a warm copy: a session's follower fetches each of its
new snapshots ahead, so a turn its first machine cannot take resumes from a hot copy on
the follower instead of decoding the whole snapshot from the store."""

from __future__ import annotations

import time
from pathlib import Path

from tests.cluster.conftest import Cluster, needs_pg, wait_until
from tests.cluster.test_cluster_durability import quick_user, restores, script
from torpor.runtime.prefetch import follower
from torpor.sandbox.gvisor import GVisorEngine
from torpor.sandbox.images import ImageStore

pytestmark = needs_pg


def test_the_follower_is_one_other_live_machine_and_moves_only_when_it_must():
    machines = [f"m{i}" for i in range(4)]
    picks = {f"ses-{n}": follower(f"ses-{n}", machines, "m0") for n in range(400)}
    assert set(picks.values()) == {"m1", "m2", "m3"}  # never the taker; spread out
    assert min(list(picks.values()).count(m) for m in ("m1", "m2", "m3")) > 80
    # m3 leaves: only the sessions it followed get a new follower
    after = {s: follower(s, ["m0", "m1", "m2"], "m0") for s in picks}
    assert all(after[s] == picks[s] for s in picks if picks[s] != "m3")
    assert follower("ses-1", ["m0"], "m0") is None


def copies(cluster: Cluster, snapshot: str) -> list[str]:
    return cluster.rt.db.snapshot_copies(snapshot)


def test_a_turn_its_machine_cannot_take_resumes_hot_on_the_follower(cluster: Cluster,
                                                                    tmp_path: Path):  # fmt: skip
    a = cluster.machine("--lease-ttl", "3")
    s = cluster.rt.create_session(model=script(tmp_path / "pre.jsonl", 3))
    quick_user(cluster, s.id, 1)  # turn 1 on a (the only machine)
    b = cluster.machine("--lease-ttl", "3")
    snap = cluster.rt.db.get(s.id).snapshot
    wait_until(lambda: copies(cluster, snap), 60, "the follower's copy", cluster)
    (mid,) = (b.home / "machine-id").read_text().split()
    assert copies(cluster, snap) == [mid]
    assert (b.home / "checkpoint-cache" / snap).is_dir()
    # and b has a standby for the session's image, set up when it took the copy
    b_engine = GVisorEngine(b.home, images=ImageStore())
    wait_until(lambda: [i for i in b_engine.list(all=True) if i.state == "standby"], 60,
               "the follower's standby", cluster)  # fmt: skip
    a.kill()  # a is gone: b takes the next turn at once, and restores its copy
    t0 = time.monotonic()
    rest = quick_user(cluster, s.id, 3, first=2)
    took = time.monotonic() - t0
    assert [c for c, _ in rest] == [2, 3]  # nothing lost
    last = restores(s.log())[-2]  # turn 2's restore, on b
    assert last["snapshot"] == snap and last.get("hot") is True, last
    assert last.get("standby") is True, last  # into the standby: as fast as on a
    print(f"\nturn 2 on the follower after the kill: {took:.1f} s for turns 2-3, restore hot")
