"""A broadcast member in its own process, for test_weight_wire.py: it joins the offer as
``rank`` and receives; with ``die_after`` it exits abruptly (no cleanup) after that many tensors,
as a generator that is killed mid-broadcast."""

import json
import os
import sys

import msgspec
import torch

from services.common import weight_broadcast as wb

if __name__ == "__main__":
    offer = msgspec.json.decode(sys.argv[1].encode(), type=wb.BroadcastOffer)
    rank, die_after = int(sys.argv[2]), int(sys.argv[3])
    pg = wb.open_group(offer, rank)
    for i, _ in enumerate(wb.receive(pg, offer, torch.device("cpu"))):
        if i + 1 == die_after:
            os._exit(9)
    print(json.dumps({"ok": True}))
