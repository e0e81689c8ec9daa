"""The collective weight transport's wire on this machine's device: NCCL where there is CUDA,
gloo on the CPU; the same functions the trainer and the engines call.

NCCL refuses two ranks of one communicator on the same GPU, so a real two-rank broadcast needs
two GPUs; with one GPU this makes the one-rank NCCL group (the constructor, its timeout option,
a broadcast call, the shutdown) and says so in its name. The engine side on a GPU (vLLM's CUDA
worker receiving into its reload) is not exercised here: it needs a second GPU for the engine.
"""

from __future__ import annotations

import threading
import uuid

import pytest
import torch

from services.common import weight_broadcast as wb
from services.common.net import free_port

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.slow


def offer(world: int, backend: str, named: dict, port: int) -> wb.BroadcastOffer:
    buckets = wb.plan_buckets([(n, t.shape) for n, t in named.items()], torch.bfloat16, 1 << 16)
    return wb.BroadcastOffer(session=uuid.uuid4().hex, address=f"127.0.0.1:{port}", world=world,
                             ranks={f"m{r}": r for r in range(1, world)}, backend=backend,
                             timeout_s=60.0, buckets=buckets)


def tensors(device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {f"layers.{i}.weight": torch.randn(64, 96 + i, generator=g).to(device) for i in range(8)}


@pytest.mark.skipif(CUDA and torch.cuda.device_count() < 2, reason="two ranks need two GPUs (NCCL)")
def test_a_two_rank_broadcast_on_this_device_is_bit_exact():
    devices = ([torch.device("cuda", 0), torch.device("cuda", 1)] if CUDA
               else [torch.device("cpu")] * 2)
    backend = wb.backend_for(devices[0])
    port = free_port()
    store = wb.host_store(port, 60.0)
    named = tensors(devices[0])
    plan = offer(2, backend, named, port)
    got = {}

    def member():
        pg = wb.open_group(plan, 1, device=devices[1])
        got.update({k: v.clone() for k, v in wb.receive(pg, plan, devices[1])})
        wb.close_group(pg)

    t = threading.Thread(target=member)
    t.start()
    pg = wb.open_group(plan, 0, store=store, device=devices[0])
    assert wb.send(pg, plan, named, devices[0]) == plan.nbytes
    t.join(60)
    wb.close_group(pg)
    assert list(got) == list(named)
    for k, v in named.items():
        assert got[k].device == devices[1]
        assert torch.equal(got[k].cpu(), v.to(torch.bfloat16).cpu())


@pytest.mark.skipif(not CUDA, reason="the NCCL group needs CUDA")
def test_the_nccl_group_is_made_and_broadcasts_with_one_rank():
    port = free_port()
    store = wb.host_store(port, 60.0)
    named = tensors(torch.device("cuda", 0))
    plan = offer(1, "nccl", named, port)
    pg = wb.open_group(plan, 0, store=store, device=torch.device("cuda", 0))
    assert wb.send(pg, plan, named, torch.device("cuda", 0)) == plan.nbytes
    torch.cuda.synchronize()
    wb.close_group(pg)
