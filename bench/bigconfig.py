#!/usr/bin/env python3
"""Writes a large Switchyard config for reload measurements.

10,000 backends of two servers each and 10,000 routes on one listener (a
tenth of them wildcard hosts). One server of every backend depends on the
generation, so writing generation N+1 over N changes every backend.

    bench/bigconfig.py /tmp/big.toml 0
    switchyard run -c /tmp/big.toml --no-watch &
    bench/bigconfig.py /tmp/big.toml 1 && curl -XPOST http://ADMIN/reload
    # the "Config applied" log line's `took` field is the reload time
"""

import sys


def main() -> None:
    path, generation = sys.argv[1], int(sys.argv[2])
    out = [
        '[admin]\nbind = "127.0.0.1:0"\n',
        '[[listeners]]\nname = "web"\nbind = "127.0.0.1:0"\ndefault_backend = "svc-0"\n',
    ]
    for i in range(10_000):
        net = f"10.{i // 250}.{i % 250}"
        out.append(
            f'[[backends]]\nname = "svc-{i}"\n'
            f'servers = ["{net}.{generation % 2 + 1}:80", "{net}.9:80"]\n'
        )
        host = f"*.tenant-{i}.example.com" if i % 10 == 0 else f"app-{i // 2}.example.com"
        prefix = "/" if i % 2 == 0 else "/api/v1/"
        out.append(
            f'[[routes]]\nlistener = "web"\nhost = "{host}"\n'
            f'path_prefix = "{prefix}"\nbackend = "svc-{i}"\n'
        )
    with open(path, "w") as f:
        f.write("\n".join(out))


if __name__ == "__main__":
    main()
