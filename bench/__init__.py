"""The ipspool benchmark: the daemon end to end against what users do instead (issue 5).

    python -m bench.run [--tiny] [--out DIR]   throughput table, JSON, Markdown, PNG
    python -m bench.latency                    pick-up latency on an idle daemon
    python -m bench.memory                     worker and supervisor peak RSS
    python -m bench.profile                    per-address cost and where it goes
"""
