"""The collective transport's wire, for real with gloo: ranks in threads of one process."""

import threading
import uuid

import pytest
import torch

from services.common import weight_broadcast as wb
from services.common.net import free_port


def offer_for(named, world, dtype=torch.float32, bucket_bytes=1024, timeout_s=20.0, port=None):
    buckets = wb.plan_buckets([(n, t.shape) for n, t in named.items()], dtype, bucket_bytes)
    return wb.BroadcastOffer(session=uuid.uuid4().hex, address=f"127.0.0.1:{port}", world=world,
                             ranks={f"gen-{r}": r for r in range(1, world)}, backend="gloo",
                             timeout_s=timeout_s, buckets=buckets)


def test_buckets_hold_every_tensor_once_aligned_and_within_the_size():
    named = [(f"t{i}", [i + 1, 7]) for i in range(40)] + [("big", [100, 100])]
    buckets = wb.plan_buckets(named, torch.bfloat16, 1024)
    specs = [s for b in buckets for s in b.tensors]
    assert [s.name for s in specs] == [n for n, _ in named]  # the given order
    for b in buckets:
        assert all(s.offset % wb.ALIGN == 0 for s in b.tensors)
        ends = [s.offset + 2 * torch.Size(s.shape).numel() for s in b.tensors]
        assert b.nbytes == ends[-1] and (b.nbytes <= 1024 or len(b.tensors) == 1)
        starts = [s.offset for s in b.tensors]
        assert all(e <= s for e, s in zip(ends, starts[1:]))  # no overlap
    assert any(b.tensors[0].name == "big" and b.nbytes == 20_000 for b in buckets)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_two_receivers_get_every_tensor_bit_for_bit(dtype):
    torch.manual_seed(0)
    named = {f"layer{i}.weight": torch.randn(17, 5 + i) for i in range(12)}
    named["head.bias"] = torch.randn(3)
    port = free_port()
    store = wb.host_store(port, 20.0)
    offer = offer_for(named, world=3, dtype=dtype, port=port)
    assert len(offer.buckets) > 2  # the test crosses buckets
    got: dict[int, dict] = {}

    def member(rank):
        pg = wb.open_group(offer, rank)
        counter = [0]
        # keep the tensors: each bucket is its own buffer, so earlier ones stay valid
        got[rank] = dict(wb.receive(pg, offer, torch.device("cpu"), counter))
        got[rank]["_bytes"] = counter[0]
        wb.close_group(pg)

    threads = [threading.Thread(target=member, args=(r,)) for r in (1, 2)]
    for t in threads:
        t.start()
    pg = wb.open_group(offer, 0, store=store)
    assert wb.send(pg, offer, named, torch.device("cpu")) == offer.nbytes
    for t in threads:
        t.join(30)
    assert wb.joined_ranks(store, offer) == {0, 1, 2}
    for rank in (1, 2):
        assert got[rank].pop("_bytes") == offer.nbytes
        assert list(got[rank]) == list(named)
        for name, t in named.items():
            assert got[rank][name].dtype == dtype
            assert torch.equal(got[rank][name], t.to(dtype)), name


def test_a_member_that_never_joins_times_out_and_is_named():
    named = {"w": torch.ones(4)}
    port = free_port()
    store = wb.host_store(port, 3.0)
    offer = offer_for(named, world=3, timeout_s=3.0, port=port)
    errors = []

    def member():
        try:
            wb.open_group(offer, 1)
        except Exception as exc:  # noqa: BLE001 - what the receiver sees
            errors.append(exc)

    t = threading.Thread(target=member)
    t.start()
    with pytest.raises(Exception):  # noqa: B017 - gloo raises RuntimeError/DistStoreError
        wb.open_group(offer, 0, store=store)
    t.join(10)
    assert errors, "the member that joined must not wait forever either"
    assert wb.joined_ranks(store, offer) == {0, 1}  # rank 2 never came


def test_membership_expires(s):
    wb.register(s, "a", wb.Member(ranks=1, backend="gloo", dtype="float32", seen=1000.0))
    wb.register(s, "b", wb.Member(ranks=2, backend="gloo", dtype="float32", seen=1000.0 + wb.MEMBER_TTL_S))
    assert set(wb.live_members(s, now=1000.0 + wb.MEMBER_TTL_S + 1)) == {"b"}
    wb.leave(s, "b")
    assert wb.live_members(s, now=1000.0) == {"a": wb.live_members(s, now=1000.0)["a"]}


def test_a_member_killed_mid_broadcast_is_detected_within_the_timeout():
    """One member process dies after its first bucket: the trainer's send and the surviving
    member's receive both fail (they do not hang), well within the offer's timeout."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    import msgspec

    named = {f"w{i}": torch.randn(64, 64) for i in range(16)}  # 16 KiB each: one per bucket
    port = free_port()
    store = wb.host_store(port, 20.0)
    offer = offer_for(named, world=3, bucket_bytes=16 << 10, timeout_s=20.0, port=port)
    assert len(offer.buckets) == 16
    root = Path(__file__).resolve().parents[2]
    doomed = subprocess.Popen([sys.executable, str(Path(__file__).with_name("broadcast_member.py")),
                               msgspec.json.encode(offer).decode(), "2", "1"],
                              cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    survivor = {}

    def member():
        try:
            pg = wb.open_group(offer, 1)
            survivor["n"] = sum(1 for _ in wb.receive(pg, offer, torch.device("cpu")))
        except Exception as exc:  # noqa: BLE001 - what the survivor sees
            survivor["error"] = exc

    t = threading.Thread(target=member)
    t.start()
    pg = wb.open_group(offer, 0, store=store)
    t0 = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - gloo's RuntimeError: connection reset by peer
        for _ in range(200):  # keep sending until the dead member's absence shows
            wb.send(pg, offer, named, torch.device("cpu"))
    failed_after = time.monotonic() - t0
    wb.close_group(pg)
    del pg  # as the broadcaster does: the group's sockets close, so the survivor hears of it
    t.join(30)
    assert doomed.wait(30) == 9
    assert failed_after < 10.0  # noticed from the broken connection, not the 20 s timeout
    assert not t.is_alive() and "error" in survivor, survivor
    assert time.monotonic() - t0 < 10.0
