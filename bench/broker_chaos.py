"""Broker chaos: Mosquitto SIGKILLed and restarted at random moments while the agent publishes
fast; prints records published, received, lost, out of order, duplicates and the worst delay.

    python bench/broker_chaos.py [--seconds 180] [--interval 0.1] [--seed 1] [--keep]

Exits 1 if a record was lost or first arrivals came out of order (duplicates are QoS 1's right).
The same loop runs for a minute in tests/faults/test_broker_chaos.py.
"""

from __future__ import annotations

import argparse
import random
import sys

from _benchlib import log, scratch_dir, sigterm_as_interrupt

from tests.faults.chaos import broker_chaos
from tests.support import AgentProcess, Broker, Subscriber


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=180.0, help="how long to keep killing")
    ap.add_argument("--interval", type=float, default=0.1, help="telemetry.interval_s")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    args = ap.parse_args()
    sigterm_as_interrupt()
    with scratch_dir("broker-chaos-", args.keep) as work:
        broker = Broker(work / "broker", persistence=True)
        broker.start()
        sub = Subscriber(broker.port)
        agent = AgentProcess(work / "agent", broker.port,
                             telemetry={"interval_s": args.interval})
        try:
            agent.start()
            run = broker_chaos(broker, agent, sub, args.seconds, random.Random(args.seed),
                               progress=log)
        finally:
            agent.kill()
            sub.close()
            broker.stop()
    seen = run.seen
    print(f"duration          {run.seconds:.0f} s (telemetry every {args.interval} s)")
    print(f"broker kills      {run.kills}")
    print(f"agent reconnects  {run.reconnects}")
    print(f"published         {run.published}")
    print(f"received          {seen.received}")
    print(f"lost              {len(seen.lost)}")
    print(f"out of order      {len(seen.out_of_order)}")
    print(f"duplicates        {seen.duplicates}")
    print(f"max delay         {seen.max_delay_s:.2f} s")
    return 1 if seen.lost or seen.out_of_order else 0


if __name__ == "__main__":
    sys.exit(main())
