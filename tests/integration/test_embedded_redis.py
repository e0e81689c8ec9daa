import os

import redis

from services.common.embedded_redis import EmbeddedRedis


def test_embedded_redis_persists_with_aof_and_stops_cleanly(tmp_path):
    server = EmbeddedRedis(tmp_path).start()
    client = redis.Redis.from_url(server.url)
    client.xadd("s", {"k": "v"})
    pid = server.proc.pid
    server.stop()
    assert server.proc.poll() is not None
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive
    assert any(p.name.startswith("appendonly") for p in tmp_path.rglob("*"))
    again = EmbeddedRedis(tmp_path, port=server.port).start()  # same data dir: AOF replayed
    try:
        assert redis.Redis.from_url(again.url).xlen("s") == 1
    finally:
        again.stop()
