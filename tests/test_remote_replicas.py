"""Two llama-server replicas behind nginx, on loopback, reached through the remote backend:
64 concurrent requests all succeed, and killing one replica mid-run loses none (requests
that broke on it are sent again and served by the other). Everything is started and
stopped here; the whole run is bounded in time."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from server_harness import (
    first_model_id,
    free_port,
    reference_tools,
    running_server,
    wait_healthy,
)

import localllm

pytestmark = pytest.mark.real_model
NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream replicas {{
        least_conn;
        server 127.0.0.1:{a} max_fails=1 fail_timeout=30s;
        server 127.0.0.1:{b} max_fails=1 fail_timeout=30s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_buffering off;
            proxy_read_timeout 120s;
            proxy_next_upstream error timeout http_502 http_503;
        }}
    }}
}}
"""


@pytest.fixture()
def cluster(default_model_path: Path, tmp_path: Path) -> Iterator[tuple[str, list[int]]]:
    """(nginx URL, [replica pids]); each replica: 4 slots, 1 thread, 512 tokens each."""
    folder = reference_tools()
    with ExitStack() as stack:
        replicas = []
        for _ in range(2):
            command = [str(folder / "llama-server"), "-m", str(default_model_path), "-np", "4",
                       "-c", "2048", "-t", "1", "--host", "127.0.0.1", "--port", "{port}"]
            replicas.append(stack.enter_context(running_server(command)))
        port = free_port()
        conf = tmp_path / "nginx.conf"
        conf.write_text(NGINX_CONF.format(
            dir=tmp_path, port=port, a=replicas[0][0].rsplit(":", 1)[1],
            b=replicas[1][0].rsplit(":", 1)[1]))
        nginx = subprocess.Popen([str(folder / "nginx"), "-p", str(tmp_path), "-c", str(conf),
                                  "-e", str(tmp_path / "error.log"), "-g", "daemon off;"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, timeout_s=30)
            yield url, [proc.pid for _, proc in replicas]
        finally:
            os.killpg(nginx.pid, signal.SIGTERM)
            nginx.wait(timeout=30)


def test_64_requests_through_nginx_survive_a_dead_replica(
        cluster: tuple[str, list[int]], tmp_path: Path) -> None:
    url, pids = cluster
    remote = localllm.connect(url, first_model_id(url), retries=6)
    assert remote.server.flavour == "llama-server"
    done: list[str] = []

    async def one(i: int) -> str:
        answer = await remote.achat([{"role": "user", "content": f"Count to {i % 9 + 3}."}],
                                    max_tokens=24, temperature=0)
        done.append(answer.text)
        return answer.text

    async def run() -> list[str]:
        tasks = [asyncio.create_task(one(i)) for i in range(64)]
        deadline = time.monotonic() + 120
        while len(done) < 16 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        os.kill(pids[1], signal.SIGKILL)  # one replica dies with requests in flight
        return await asyncio.wait_for(asyncio.gather(*tasks), timeout=300)

    texts = asyncio.run(run())
    assert len(texts) == 64 and all(isinstance(t, str) for t in texts)
    assert 16 <= len(done) == 64
    # nginx saw the replica fail under requests (so some were sent again)
    log = (tmp_path / "error.log").read_text()
    assert "prematurely closed" in log or "Connection refused" in log, log[-2000:]
    remote.close()
