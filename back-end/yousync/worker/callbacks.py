"""Operator commands for completion callbacks, from back-end/ on any host with the settings:

    python -m yousync.worker.callbacks list            # dead letters: id, job, attempts, error
    python -m yousync.worker.callbacks replay ID ...   # these dead letters back to due
    python -m yousync.worker.callbacks replay --all    # every dead letter

A replayed delivery starts over: attempts from 0, a new give-up window of
CALLBACK_GIVE_UP_SECONDS from now, the same `webhook-id` (a receiver that did get an earlier
attempt after all deduplicates it). The next drain (within CALLBACK_TICK_SECONDS) sends it.
Only Redis is needed: no worker has to run the command, and it is safe to run twice.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from yousync.core.callbacks import DeliveryStore
from yousync.core.config import get_settings
from yousync.worker.context import redis_client


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m yousync.worker.callbacks")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list dead-lettered deliveries")
    replay = commands.add_parser("replay", help="send dead-lettered deliveries again")
    replay.add_argument("ids", nargs="*", metavar="DELIVERY_ID")
    replay.add_argument("--all", action="store_true", help="every dead letter")
    args = parser.parse_args(argv)

    settings = get_settings()
    client = redis_client(settings)
    try:
        store = DeliveryStore(client, settings)
        if args.command == "list":
            for delivery_id in store.dead_letters():
                record = store.record(delivery_id)
                print(
                    delivery_id,
                    record.get("job_id", "?"),
                    f"attempts={record.get('attempts', '?')}",
                    record.get("last_error", ""),
                    sep="\t",
                )
            return 0
        if args.all == bool(args.ids):
            parser.error("replay takes delivery ids or --all, not both or neither")
        wanted = store.dead_letters() if args.all else args.ids
        replayed = store.replay(wanted)
        for delivery_id in wanted:
            print(delivery_id, "replayed" if delivery_id in replayed else "not a dead letter")
        return 0 if len(replayed) == len(wanted) else 1
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
