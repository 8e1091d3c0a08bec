"""python -m ros_bridge.dds --server HOST:PORT: serve plans to ROS 2 topics over DDS, no ROS install needed."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from emu35_robot.client import PlannerClient

from .bridge import DdsBridge, Topics, dds_topic


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ros_bridge.dds", description=__doc__)
    p.add_argument("--server", required=True, help="planning service, host:port")
    p.add_argument("--token", default=os.environ.get("EMU35_ROBOT_TOKEN"), help="bearer token ($EMU35_ROBOT_TOKEN)")
    p.add_argument("--tls", action="store_true", help="TLS with the system roots")
    p.add_argument("--tls-ca", help="TLS with this CA certificate (PEM)")
    p.add_argument("--timeout", type=float, default=600.0, help="deadline of one plan, seconds")
    p.add_argument("--domain", type=int, default=int(os.environ.get("ROS_DOMAIN_ID", "0")), help="($ROS_DOMAIN_ID)")
    p.add_argument("--frame-id", default="camera", help="header.frame_id of published key-frames")
    p.add_argument("--image-timeout", type=float, default=5.0, help="how long a request waits for a first frame")
    p.add_argument("--qos-depth", type=int, default=10, help="keep-last depth of the reliable topics")
    for name, default in vars(Topics()).items():
        p.add_argument(f"--{name.replace('_', '-')}-topic", dest=f"topic_{name}", default=default)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    topics = Topics(**{k[len("topic_") :]: v for k, v in vars(args).items() if k.startswith("topic_")})
    tls = args.tls_ca or args.tls
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with PlannerClient(args.server, token=args.token, tls=tls, timeout=args.timeout) as client:
        bridge = DdsBridge(
            client,
            args.domain,
            topics,
            frame_id=args.frame_id,
            image_timeout=args.image_timeout,
            qos_depth=args.qos_depth,
        )
        with bridge:
            names = ", ".join(dds_topic(n) for n in vars(topics).values())
            print(f"ros_bridge.dds ready on domain {args.domain}: {names}", file=sys.stderr, flush=True)
            stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
