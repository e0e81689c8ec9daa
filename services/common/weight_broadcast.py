"""The collective weight transport's shared half: the offer, the bucket plan and the wire.

After a step the trainer (rank 0 of a group made for that one sync) broadcasts the policy's
parameters to every generator engine that registered for it, trainer memory to engine memory
with no disk between. The group is made per sync from a store the trainer hosts: a generator
that restarts or scales out joins at the next version, and one that died is simply not asked
again (and a sync it stalls times out; the others fall back to the version's files).

- ``BroadcastOffer`` travels inside the version's announcement (the same Redis transaction): who
  joins with which rank, where the store is, and the manifest -- buckets of tensors (name,
  dtype, shape, byte offset) in the order they are sent.
- ``open_group`` makes the group: gloo for CPU tensors, NCCL for CUDA ones. One code path: the
  CPU tests run it for real with gloo; ``scripts/gpu-check.sh`` runs it with NCCL.
- ``send`` and ``receive`` move one bucket per broadcast, the next one in flight while the
  current one is packed or loaded.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    import torch

ALIGN = 64  # byte offsets in a bucket: any dtype's view of the bytes is aligned
MEMBERS_KEY = "weights:members"  # Redis hash: generator name -> its Member record (JSON)
MEMBER_TTL_S = 30.0  # a member not seen for this long is not offered a sync


class TensorSpec(msgspec.Struct, frozen=True, array_like=True):
    name: str
    dtype: str  # torch dtype name without "torch.", e.g. "bfloat16"
    shape: list[int]
    offset: int  # bytes into the bucket


class Bucket(msgspec.Struct, frozen=True, array_like=True):
    nbytes: int
    tensors: list[TensorSpec]


class BroadcastOffer(msgspec.Struct, frozen=True, kw_only=True):
    session: str  # unique per sync: the store's key prefix
    address: str  # host:port of the trainer's store
    world: int
    ranks: dict[str, int]  # generator name -> the first rank of its engine's workers
    backend: str  # "gloo" (CPU tensors) or "nccl" (CUDA tensors)
    timeout_s: float
    buckets: list[Bucket]

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buckets)


class Member(msgspec.Struct, frozen=True, kw_only=True):
    """A generator's registration: how many ranks its engine needs (tensor/pipeline-parallel
    workers each receive every tensor and keep their shard), its backend and serving dtype."""

    ranks: int
    backend: str
    dtype: str
    seen: float  # time.time() of its latest heartbeat


# torch is imported where it is used: schemas.py imports this module, and the verifier never
# needs torch.
def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def to_dtype(name: str) -> torch.dtype:
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"not a torch dtype: {name!r}")
    return dtype


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def plan_buckets(named: list[tuple[str, torch.Size | list[int]]], dtype: torch.dtype,
                 bucket_bytes: int) -> list[Bucket]:
    """Tensors in the given order, packed into buckets of at most ``bucket_bytes`` (a larger
    tensor gets a bucket of its own)."""
    import torch

    size = torch.empty((), dtype=dtype).element_size()
    buckets, current, used = [], [], 0
    for name, shape in named:
        nbytes = size * int(torch.Size(shape).numel())
        offset = -(-used // ALIGN) * ALIGN
        if current and offset + nbytes > bucket_bytes:
            buckets.append(Bucket(nbytes=used, tensors=current))
            current, offset = [], 0
        current.append(TensorSpec(name, dtype_name(dtype), list(shape), offset))
        used = offset + nbytes
    if current:
        buckets.append(Bucket(nbytes=used, tensors=current))
    return buckets


# -- membership (Redis) ----------------------------------------------------------------------
def register(s, name: str, member: Member) -> None:
    s.r.hset(s.key(MEMBERS_KEY), name, msgspec.json.encode(member))


def leave(s, name: str) -> None:
    s.r.hdel(s.key(MEMBERS_KEY), name)


def live_members(s, now: float | None = None) -> dict[str, Member]:
    now = time.time() if now is None else now
    out = {}
    for raw_name, raw in s.r.hgetall(s.key(MEMBERS_KEY)).items():
        name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
        try:
            member = msgspec.json.decode(raw, type=Member)
        except msgspec.ValidationError:
            continue
        if now - member.seen <= MEMBER_TTL_S:
            out[name] = member
    return out


# -- the group -------------------------------------------------------------------------------
def host_store(port: int, timeout_s: float):
    """The trainer's store: made once, every sync's group lives under its own prefix."""
    import torch.distributed as dist

    return dist.TCPStore("0.0.0.0", port, is_master=True, wait_for_workers=False,
                         timeout=datetime.timedelta(seconds=timeout_s))


def open_group(offer: BroadcastOffer, rank: int, store=None, device: torch.device | None = None):
    """This process's end of the sync's group (``store``: the trainer's own; otherwise a client
    of it). Blocks until every rank has joined or ``offer.timeout_s`` passes."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=offer.timeout_s)
    if store is None:
        host, port = offer.address.rsplit(":", 1)
        store = dist.TCPStore(host, int(port), is_master=False, wait_for_workers=False, timeout=timeout)
    prefixed = dist.PrefixStore(f"t1-weights/{offer.session}", store)
    if rank != 0 and prefixed.check(["closed"]):
        raise TimeoutError(f"sync {offer.session} is over: joined too late")
    prefixed.set(f"joined/{rank}", "1")  # so the trainer can tell who never came
    if offer.backend == "nccl":
        import torch

        if device is not None:
            torch.cuda.set_device(device)
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return dist.ProcessGroupNCCL(prefixed, rank, offer.world, options)
    return dist.ProcessGroupGloo(prefixed, rank, offer.world, timeout)


def joined_ranks(store, offer: BroadcastOffer) -> set[int]:
    import torch.distributed as dist

    prefixed = dist.PrefixStore(f"t1-weights/{offer.session}", store)
    return {r for r in range(offer.world) if prefixed.check([f"joined/{r}"])}


def close_session(store, offer: BroadcastOffer) -> None:
    """Rank 0, after the sync (done or failed): a member that comes later gives up at once."""
    import torch.distributed as dist

    dist.PrefixStore(f"t1-weights/{offer.session}", store).set("closed", "1")


def close_group(pg) -> None:
    shutdown = getattr(pg, "shutdown", None)  # NCCL: free the communicator now
    if shutdown is not None:
        try:
            shutdown()
        except Exception:  # noqa: BLE001 - already broken: nothing more to free
            pass


def _broadcast(pg, buf: torch.Tensor):
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    return pg.broadcast([buf], opts)


def send(pg, offer: BroadcastOffer, tensors: dict[str, torch.Tensor], device: torch.device) -> int:
    """Rank 0: every bucket of the offer, packed from ``tensors`` (cast to the offer's dtype);
    the next bucket is packed while the previous one is on the wire. Returns bytes sent."""
    import torch

    pending = None
    for bucket in offer.buckets:
        buf = torch.empty(bucket.nbytes, dtype=torch.uint8, device=device)
        for spec in bucket.tensors:
            t = tensors[spec.name].detach()
            n = t.numel() * to_dtype(spec.dtype).itemsize
            buf[spec.offset:spec.offset + n].view(to_dtype(spec.dtype)).view(t.shape).copy_(t)
        if pending is not None:
            pending.wait()
        pending = _broadcast(pg, buf)
    if pending is not None:
        pending.wait()
    return offer.nbytes


def receive(pg, offer: BroadcastOffer, device: torch.device, counter: list[int] | None = None
            ) -> Iterator[tuple[str, torch.Tensor]]:
    """A generator rank: (name, tensor) in the offer's order, bucket by bucket, the next
    bucket already on the wire. Each bucket is a fresh buffer: vLLM's in-place reload keeps the
    tensors of a layer it has not completed, so a buffer must outlive its own bucket."""
    import torch

    def post(bucket: Bucket):
        buf = torch.empty(bucket.nbytes, dtype=torch.uint8, device=device)
        return buf, _broadcast(pg, buf)

    nxt = post(offer.buckets[0]) if offer.buckets else None
    for i, bucket in enumerate(offer.buckets):
        buf, work = nxt
        work.wait()
        nxt = post(offer.buckets[i + 1]) if i + 1 < len(offer.buckets) else None
        if counter is not None:
            counter[0] += bucket.nbytes
        for spec in bucket.tensors:
            dtype = to_dtype(spec.dtype)
            n = int(torch.Size(spec.shape).numel()) * dtype.itemsize
            yield spec.name, buf[spec.offset:spec.offset + n].view(dtype).view(spec.shape)
