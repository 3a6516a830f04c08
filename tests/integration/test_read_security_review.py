"""Attacks from the security review on the reading ports: ClickHouse's HTTP interface in process
(no worker needed), on a pool that is never reached unless a request gets past its checks."""

from __future__ import annotations

import struct

import lz4.block
import lz4.frame
import pytest
from aiohttp.test_utils import TestClient, TestServer

from agents import clickhouse_http
from agents.clickhouse_http import ClickHouseHTTP, _checksum, native_decompress
from sendtrack import auth

MAX_BODY_BYTES = getattr(clickhouse_http, "MAX_BODY_BYTES", 1 << 20)


def _block(plain: bytes) -> bytes:
    """One of ClickHouse's compressed blocks (what `decompress=1` bodies are made of)."""
    packed = lz4.block.compress(plain, store_size=False)
    block = struct.pack("<BII", 0x82, 9 + len(packed), len(plain)) + packed
    return _checksum(block) + block


# 1 MiB of LZ4 is 255 MiB of zeros; LZ4 blocks inside an LZ4 frame multiply again (1 MiB of such a
# frame was 60 GiB: MemoryError, or the OOM killer, before any credential was looked at).
NATIVE_BOMB = _block(b"\0" * (64 << 20))                                # 257 KiB -> 64 MiB
FRAME_BOMB = lz4.frame.compress(NATIVE_BOMB * 16, compression_level=16)  # 4 KiB -> 1 GiB


@pytest.fixture
def decompressed(monkeypatch):
    """How many bytes the server's LZ4 decompression produced."""
    produced = {"bytes": 0}
    block_decompress, frame_decompress = lz4.block.decompress, lz4.frame.decompress

    def counting_block(data, *args, **kwargs):
        out = block_decompress(data, *args, **kwargs)
        produced["bytes"] += len(out)
        return out

    def counting_frame(data, *args, **kwargs):
        out = frame_decompress(data, *args, **kwargs)
        produced["bytes"] += len(out)
        return out

    monkeypatch.setattr(clickhouse_http.lz4.block, "decompress", counting_block)
    monkeypatch.setattr(clickhouse_http.lz4.frame, "decompress", counting_frame)
    return produced


async def _client(readers: str) -> TestClient:
    server = ClickHouseHTTP(lambda workspace: None, auth.Readers(readers), threads=1)
    client = TestClient(TestServer(server.application(), host="127.0.0.1"))
    await client.start_server()
    return client


async def test_a_stranger_gets_no_decompression(decompressed):
    """Before: an unauthenticated 257 KiB request made the worker decompress 64 MiB, and 4 KiB of a
    frame of blocks 1 GiB, on the event loop, before the 401."""
    client = await _client("ana:pw-ana")
    try:
        r = await client.post("/?decompress=1", data=NATIVE_BOMB)
        assert r.status == 401
        # A web page's no-cors POST (no custom header: `decompress=1` is in the URL) is cross-site.
        r = await client.post("/?decompress=1", data=NATIVE_BOMB, headers={"Sec-Fetch-Site": "cross-site"})
        assert r.status == 403
        r = await client.post("/?decompress=1", data=FRAME_BOMB,
                              headers={"Content-Encoding": "lz4", "X-ClickHouse-User": "ana",
                                       "X-ClickHouse-Key": "wrong"})
        assert r.status == 401
    finally:
        await client.close()
    assert decompressed["bytes"] == 0


async def test_a_reader_cannot_send_a_decompression_bomb(decompressed):
    """A reader's compressed body is held to the bound of a plain one (1 MiB)."""
    client = await _client("ana:pw-ana")
    creds = {"X-ClickHouse-User": "ana", "X-ClickHouse-Key": "pw-ana"}
    try:
        r = await client.post("/?decompress=1", data=NATIVE_BOMB, headers=creds)
        assert r.status == 400 and "Code: 271" in await r.text()
        r = await client.post("/?decompress=1", data=FRAME_BOMB, headers={**creds, "Content-Encoding": "lz4"})
        assert r.status == 400 and "Code: 271" in await r.text()
        # A small compressed statement still goes through (to the pool: not open here, 503).
        r = await client.post("/?decompress=1", data=_block(b"SELECT 1"), headers=creds)
        assert r.status == 503
        r = await client.post("/", data=lz4.frame.compress(b"SELECT 1"), headers={**creds, "Content-Encoding": "lz4"})
        assert r.status == 503
    finally:
        await client.close()
    assert decompressed["bytes"] <= 2 * MAX_BODY_BYTES


def test_native_blocks_are_not_decompressed_past_the_bound():
    assert native_decompress(_block(b"x" * 1000) * 3) == b"x" * 3000
    with pytest.raises(ValueError, match="exceed"):
        native_decompress(_block(b"\0" * (MAX_BODY_BYTES + 1)))


async def test_a_large_result_is_serialized_off_the_event_loop(monkeypatch):
    """Before: /query built its JSON on the event loop (5 s for a result within the limits: no
    heartbeat, no insert, no webhook meanwhile). The JSON is now made in the readers' thread."""
    import threading
    from types import SimpleNamespace

    from faust.utils import json as faust_json

    from agents import web as web_module
    from agents.app import app
    from sendtrack.settings import Settings
    from sinks.analyst import Analysts

    pool = Analysts(Settings(query_concurrency=1), SimpleNamespace(database="sendtrack"))
    monkeypatch.setattr(pool, "query", lambda sql, parameters=None: (["n"], [[None] * 1000] * 100))
    monkeypatch.setattr(web_module, "_analysts", {None: pool})
    monkeypatch.setattr(web_module, "readers", auth.Readers(""))
    threads: list[str] = []
    dumps = faust_json.dumps

    def spying_dumps(value, *args, **kwargs):
        threads.append(threading.current_thread().name)
        return dumps(value, *args, **kwargs)

    monkeypatch.setattr(faust_json, "dumps", spying_dumps)
    request = SimpleNamespace(headers={"Host": "localhost"}, remote="127.0.0.1", query={"q": "SELECT ..."})
    try:
        response = await web_module.query_page(app, app.web).get(request)
    finally:
        pool.close()
    assert response.status == 200 and response.content_type == "application/json"
    assert response.charset == "utf-8"
    assert faust_json.loads(response.body)["rows"][0][:2] == [None, None]
    assert threads and all(name.startswith("readers") for name in threads), threads
