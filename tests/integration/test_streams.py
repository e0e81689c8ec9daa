"""Redis Streams semantics on a real redis-server: ack-after-write, reclaim, dead letters."""

import time

from services.common import streams
from services.common.schemas import Prompt


def _prompt(i: int) -> Prompt:
    return Prompt(prompt_id=f"p{i}", index=i, text=f"Q:{i}", gold=str(i))


def test_forward_and_ack_is_atomic_and_exactly_once(s):
    c = streams.Consumer(s, streams.PROMPTS, "g", "c1", Prompt)
    for i in range(3):
        s.publish(streams.PROMPTS, _prompt(i))
    entries = c.read(10, block_ms=100)
    assert [e.msg.prompt_id for e in entries] == ["p0", "p1", "p2"]
    pipe = s.transaction()
    for e in entries:
        s.publish(streams.ROLLOUTS, e.msg, pipe)
    c.ack([e.id for e in entries], pipe)
    pipe.execute()
    assert s.length(streams.ROLLOUTS) == 3
    assert s.pending_count(streams.PROMPTS, "g") == 0
    assert c.read(10, block_ms=50) == []


def test_acknowledged_entries_are_deleted_unless_kept(s):
    kept = streams.Streams(s.r, s.prefix + "-kept", keep_acked=True)
    for target in (s, kept):
        for i in range(4):
            target.publish(streams.PROMPTS, _prompt(i))
        c = streams.Consumer(target, streams.PROMPTS, "g", "c1", Prompt)
        entries = c.read(3, block_ms=100)  # p3 stays unread, p2 read but not acked
        pipe = target.transaction()
        c.ack([e.id for e in entries[:2]], pipe)
        pipe.execute()
    left = [streams.schemas.decode(f[b"data"]).prompt_id for _, f in s.r.xrange(s.key(streams.PROMPTS))]
    assert left == ["p2", "p3"]  # pending and unread entries stay; acked ones are gone
    assert kept.length(streams.PROMPTS) == 4
    assert s.pending_count(streams.PROMPTS, "g") == 1


def test_restarted_consumer_rereads_its_own_pending_entries(s):
    s.publish(streams.PROMPTS, _prompt(1))
    first = streams.Consumer(s, streams.PROMPTS, "g", "worker-0", Prompt)
    assert [e.msg.prompt_id for e in first.read(5, block_ms=100)] == ["p1"]
    # crash: no ack. The same name comes back (a restarted process):
    again = streams.Consumer(s, streams.PROMPTS, "g", "worker-0", Prompt)
    got = again.read(5, block_ms=100)
    assert [e.msg.prompt_id for e in got] == ["p1"]
    assert again.reclaimed == 1


def test_dead_consumers_entries_are_claimed_after_the_visibility_timeout(s):
    s.publish(streams.PROMPTS, _prompt(7))
    dead = streams.Consumer(s, streams.PROMPTS, "g", "dead", Prompt, visibility_timeout_s=0.3)
    assert len(dead.read(5, block_ms=100)) == 1
    other = streams.Consumer(s, streams.PROMPTS, "g", "alive", Prompt, visibility_timeout_s=0.3)
    assert other.read(5, block_ms=50) == []  # not idle long enough yet
    time.sleep(0.7)
    got = []
    for _ in range(5):
        got += other.read(5, block_ms=50)
        if got:
            break
        time.sleep(0.3)
    assert [e.msg.prompt_id for e in got] == ["p7"]
    assert other.reclaimed == 1


def test_a_consumer_never_claims_what_it_holds(s):
    # Long work (a generation, a batch being collected) goes idle in Redis; reading again must
    # not hand the same entry to its holder a second time.
    s.publish(streams.PROMPTS, _prompt(1))
    c = streams.Consumer(s, streams.PROMPTS, "g", "worker", Prompt, visibility_timeout_s=0.2)
    assert [e.msg.prompt_id for e in c.read(5, block_ms=50)] == ["p1"]
    time.sleep(0.5)
    c._last_keep_alive = time.monotonic()  # no keep-alive: the entry really is idle
    c._last_reclaim = 0.0
    assert c.read(5, block_ms=50) == [] and c.reclaimed == 0


def test_keep_alive_keeps_slow_work_from_peers(s):
    s.publish(streams.PROMPTS, _prompt(2))
    slow = streams.Consumer(s, streams.PROMPTS, "g", "slow", Prompt, visibility_timeout_s=0.4)
    peer = streams.Consumer(s, streams.PROMPTS, "g", "peer", Prompt, visibility_timeout_s=0.4)
    assert len(slow.read(5, block_ms=50)) == 1
    for _ in range(6):  # 0.9 s in all, over twice the visibility timeout
        time.sleep(0.15)
        slow.keep_alive(force=True)
        peer._last_reclaim = 0.0
        assert peer.read(5, block_ms=10) == []
    assert peer.reclaimed == 0


def test_released_entries_are_claimed_again_once_idle(s):
    # A failed iteration releases what it held; the holder itself picks it up after the timeout.
    s.publish(streams.PROMPTS, _prompt(3))
    c = streams.Consumer(s, streams.PROMPTS, "g", "worker", Prompt, visibility_timeout_s=0.2)
    first = c.read(5, block_ms=50)
    c.release()
    time.sleep(0.4)
    c._last_reclaim = 0.0
    again = c.read(5, block_ms=50)
    assert [e.id for e in again] == [e.id for e in first] and c.reclaimed == 1
    assert c.is_pending(first[0].id)
    pipe = s.transaction()
    c.ack([first[0].id], pipe)
    pipe.execute()
    assert not c.is_pending(first[0].id) and c.holding() == set()


def test_undecodable_entry_goes_to_dead_letters_with_reason(s):
    c = streams.Consumer(s, streams.PROMPTS, "g", "c1", Prompt)
    s.r.xadd(s.key(streams.PROMPTS), {"data": b"\xc1garbage"})
    s.publish(streams.PROMPTS, _prompt(2))
    entries = c.read(10, block_ms=100)
    assert [e.msg.prompt_id for e in entries] == ["p2"]
    dead = s.dead_letters()
    assert len(dead) == 1 and dead[0]["stream"] == "prompts" and "undecodable" in dead[0]["reason"]
    assert s.pending_count(streams.PROMPTS, "g") == 1  # only the good one awaits its ack


def test_a_poison_entry_is_dead_lettered_and_accounted_after_max_deliveries(s):
    """Each restart of a consumer that crashes on an entry re-reads it (a delivery); past the
    limit it goes to the dead letters and the ledger drops its prompt as poison, while a
    healthy entry behind it is still served."""
    from services.common.ledger import Ledger

    limited = streams.Streams(s.r, s.prefix, max_deliveries=3)
    ledger = Ledger(limited)
    pipe = limited.transaction()
    for i in (1, 2):
        ledger.mark_enqueued(pipe, f"p{i}")
        limited.publish(streams.PROMPTS, _prompt(i), pipe)
    pipe.execute()
    first = streams.Consumer(limited, streams.PROMPTS, "g", "worker-0", Prompt, on_poison=ledger.mark_poisoned)
    assert [e.msg.prompt_id for e in first.read(1, block_ms=100)] == ["p1"]  # delivery 1, then a crash
    for delivery in (2, 3):  # restarts re-read it: still under the limit
        again = streams.Consumer(limited, streams.PROMPTS, "g", "worker-0", Prompt,
                                 on_poison=ledger.mark_poisoned)
        assert [e.msg.prompt_id for e in again.read(1, block_ms=100)] == ["p1"], delivery
    last = streams.Consumer(limited, streams.PROMPTS, "g", "worker-0", Prompt, on_poison=ledger.mark_poisoned)
    # the 4th delivery is poison: p1 is dead-lettered and the read goes on to the next entry
    assert [e.msg.prompt_id for e in last.read(1, block_ms=100)] == ["p2"]
    dead = limited.dead_letters()
    assert len(dead) == 1 and "poison: delivered 4 times" in dead[0]["reason"]
    assert ledger.status("p1") == "dropped:poison" and ledger.counts()["dropped:poison"] == 1
    assert limited.pending_count(streams.PROMPTS, "g") == 1  # p2, read and not yet acknowledged
    assert ledger.in_flight() == 1


def test_a_poison_entry_claimed_by_peers_is_dead_lettered_too(s):
    limited = streams.Streams(s.r, s.prefix, max_deliveries=2)
    limited.publish(streams.PROMPTS, _prompt(5))
    reads = []
    for name in ("a", "b", "c", "d"):  # each claims it once idle, then dies
        c = streams.Consumer(limited, streams.PROMPTS, "g", name, Prompt, visibility_timeout_s=0.2)
        time.sleep(0.3)
        reads.append(len(c.read(1, block_ms=50)))
    assert reads == [1, 1, 0, 0]
    assert "poison: delivered 3 times" in limited.dead_letters()[0]["reason"]
    assert limited.pending_count(streams.PROMPTS, "g") == 0


def test_keys_share_one_hash_tag(s):
    keys = {s.key(n) for n in (streams.PROMPTS, streams.ROLLOUTS, streams.SCORED, streams.DEAD)}
    assert all(k.startswith("{" + s.prefix + "}:") for k in keys)
