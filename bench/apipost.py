"""The broker's publish API alone: CPU per POST (issue 16, fourteenth session).

``python -m bench.apipost`` starts one broker (no edges, no clients: the fan-out has no
subscriber), and a publisher process that POSTs ``--batch`` items to ``/publish/`` ``--rate``
times a second for ``--seconds``, each POST on a fresh connection (Pushpin's API, and
gripcast's, close every connection after the answer), as the publisher libraries do against
either.  Prints the broker's CPU (user + system, /proc) per POST over the publishing, after a
second of warm-up.  It isolates what one publish costs the broker, request handling included,
from the edges, the clients and the cache effects of sharing the machine with them; the
in-process view without sockets is ``bench.msgpath``.

    .venv/bin/python -m bench.apipost [--rate 1500] [--batch 1] [--seconds 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import tempfile
import time

from bench.procs import cpu_s, stop_group
from bench.targets import GripcastTarget

WARMUP_S = 1.0


def publisher(url: str, rate: int, batch: int, seconds: float, out) -> None:
    """POST ``batch`` items ``rate`` times a second for ``seconds``; send back the count."""
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    t0 = time.monotonic()
    sent = k = 0
    while time.monotonic() - t0 < seconds:
        delay = t0 + sent / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        items = [
            {
                "channel": f"c{(k + i) % 1000}",
                "id": str(k + i),
                "formats": {"http-stream": {"content": "data: x\n\n"}},
            }
            for i in range(batch)
        ]
        k += batch
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request(
            "POST", "/publish/", json.dumps({"items": items}), {"Content-Type": "application/json"}
        )
        answer = conn.getresponse()
        answer.read()
        conn.close()
        if answer.status != 200:
            raise RuntimeError(f"publish answered {answer.status}")
        sent += 1
    out.send((sent, time.monotonic() - t0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=int, default=1500, help="POSTs a second (default 1,500)")
    ap.add_argument("--batch", type=int, default=1, help="items a POST (default 1)")
    ap.add_argument("--seconds", type=float, default=10.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gripcast-apipost-") as workdir:
        target = GripcastTarget(origin_port=1, edges=0, workdir=workdir).start_broker_only()
        proc = target.proc
        assert proc is not None
        try:
            broker = proc.pid
            ours, theirs = multiprocessing.Pipe()
            pub = multiprocessing.Process(
                target=publisher,
                args=(target.publish_url, a.rate, a.batch, a.seconds + WARMUP_S, theirs),
            )
            pub.start()
            time.sleep(WARMUP_S)
            c0, w0 = cpu_s(broker), time.monotonic()
            sent, elapsed = ours.recv()
            c1, w1 = cpu_s(broker), time.monotonic()
            pub.join()
        finally:
            stop_group(proc)
    posts = sent * (w1 - w0) / elapsed  # the POSTs of the measured part
    print(
        f"broker CPU {c1 - c0:.2f} s over {w1 - w0:.1f} s, {sent / elapsed:,.0f} POSTs/s of "
        f"{a.batch} item(s): {(c1 - c0) / posts * 1e6:.0f} us per POST"
    )


if __name__ == "__main__":
    main()
