"""`python -m bench`: every CPU benchmark, one after the other; exits non-zero if a target is missed."""

from __future__ import annotations

import sys

from bench import batching, footprint, overhead, publish, raw_vs_queue, scale, sdxl, seed_style


def main() -> int:
    """Run items 1, 1b, 1c, 1d, 2, 3 and 4 and report which targets hold."""
    print("== item 1: raw diffusers loop vs sdqueue end to end ==")
    queue_ok = raw_vs_queue.main()["ratio"] >= raw_vs_queue.TARGET_RATIO
    print("\n== item 1d: the same on the tiny SDXL model ==")
    sdxl_ok = sdxl.main()["ratio"] >= raw_vs_queue.TARGET_RATIO
    print("\n== item 1b: micro-batching vs raw batch 1 ==")
    batching_ok = batching.main() >= batching.TARGET_RATIO
    print("\n== item 1c: the broker and bucket's cost per job ==")
    overhead.main([])
    print("\n== item 2: seed-style app (generation in its async handler) vs bridge + worker, 16 callers ==")
    health_ok = seed_style.is_health_ok(seed_style.main())
    print("\n== item 3: client publish throughput ==")
    publish_ok = publish.main() >= publish.TARGET_PER_S
    print("\n== item 4: cold start and memory ==")
    footprint.main()
    print("\n== scale-out: 1, 2 and 4 workers on one queue ==")
    scale.main()
    return 0 if queue_ok and sdxl_ok and batching_ok and health_ok and publish_ok else 1


if __name__ == "__main__":
    sys.exit(main())
