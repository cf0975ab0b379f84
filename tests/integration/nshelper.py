"""Client and publisher processes for tests that run inside network namespaces
(``ip netns exec NS python -m tests.integration.nshelper ...``), where the test process itself
cannot open sockets.

    stream URL                  one streaming GET (httpx); prints "open", then each body line
    publish URL CHANNEL         publishes each stdin line (gripcontrol over HTTP); prints "ok N"
    get URL                     one GET; prints the body
"""

from __future__ import annotations

import sys

import httpx


def stream(url: str) -> int:
    with httpx.Client(timeout=httpx.Timeout(None, connect=5.0)) as client:
        with client.stream("GET", url) as resp:
            print(f"open {resp.status_code}", flush=True)
            for line in resp.iter_lines():
                print(f"line {line}", flush=True)
    print("closed", flush=True)
    return 0


def publish(url: str, channel: str) -> int:
    from gripcontrol import GripPubControl

    pub = GripPubControl({"control_uri": url})
    for n, line in enumerate(sys.stdin, 1):
        pub.publish_http_stream(channel, line)
        print(f"ok {n}", flush=True)
    return 0


def get(url: str) -> int:
    sys.stdout.write(httpx.get(url, timeout=5).text)
    return 0


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    sys.exit({"stream": stream, "publish": publish, "get": get}[mode](*args))
