"""One IntelMQ bot in the foreground, for ``bench.intelmq``; run with the IntelMQ venv's python.

    BENCH_DNS=127.0.0.1:PORT INTELMQ_ROOT_DIR=DIR python -P bench/intelmq_bot.py BOT_ID MODULE

(``-P``: bench/ must not be on sys.path, where bench/intelmq.py would hide the package.)

IntelMQ's reverse-DNS expert asks dnspython's default resolver, which reads
/etc/resolv.conf and always uses port 53. Before the bot starts, this swaps
in a resolver that asks only the benchmark's nameserver on loopback (refused
for any other address), so no query leaves the machine. Everything else is
IntelMQ's own ``Bot.run``, as ``intelmqctl start`` would run it, without the
daemon management.

Run as root, a bot insists on switching to an ``intelmq`` user and stops if
there is none. The benchmark creates no users (the machine is shared), and
an unprivileged user could not reach this machine's Python (under /root), so
as root the switch is reported done and the bot runs as root: on loopback,
in a private directory, it does the same work either way.
"""

from __future__ import annotations

import importlib
import ipaddress
import os
import sys

import dns.resolver


def main() -> None:
    bot_id, module = sys.argv[1:3]
    host, port = os.environ["BENCH_DNS"].rsplit(":", 1)
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"BENCH_DNS must be a loopback address, not {host}")
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = int(port)
    resolver.timeout = 2.0   # per attempt, as ipspool's rdns default
    resolver.lifetime = 4.0  # and one retry
    dns.resolver.default_resolver = resolver
    bot = importlib.import_module(module).BOT
    if os.geteuid() == 0:
        from intelmq.lib import utils

        utils.drop_privileges = lambda: True
    bot.run(parsed_args=bot._create_argparser().parse_args([bot_id]))


if __name__ == "__main__":
    main()
