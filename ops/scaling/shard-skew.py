#!/usr/bin/env python3
"""ops/scaling/shard-skew.py — how evenly zipf-distributed accounts spread over Citus shards.

Citus places a row of a table distributed by user_id on the shard whose hash range holds
hashint8(user_id): the 2^32 hash values are cut into N equal ranges. This script computes that
placement exactly (PostgreSQL's hashint8, reimplemented below and checked against a live
PostgreSQL when --check-url is given) for accounts whose request volumes follow a zipf law
(account of rank r gets a share proportional to 1/r^s), and reports per-shard load:

  top account   share of all requests of the busiest account (a shard cannot split it)
  hottest shard share of the busiest shard, and its ratio to the mean (1/N)
  p50 / min     the median and the least loaded shard, relative to the mean
  cv            coefficient of variation of shard load
  isolated      hottest/mean once the 10 busiest accounts have shards of their own
                (citus isolate_tenant_to_new_shard), measured over the remaining shards

Usage: ops/scaling/shard-skew.py [--users 10000,100000,1000000] [--s 0.8,1.0,1.2]
                                 [--shards 32,64] [--requests 1e9] [--check-url postgres://…]
Only the standard library is needed. Ranks are shuffled onto user ids with a fixed seed (a
busy account does not have a small id), so runs are reproducible.
"""

import argparse
import random
import statistics
import subprocess
import sys

MASK = 0xFFFFFFFF


def rot(x, k):
    return ((x << k) | (x >> (32 - k))) & MASK


def hash_uint32(k):
    """PostgreSQL's hash_uint32 (src/common/hashfn.c): Jenkins lookup3 `final` on one word."""
    a = b = c = (0x9E3779B9 + 4 + 3923095) & MASK
    a = (a + k) & MASK
    c ^= b; c = (c - rot(b, 14)) & MASK
    a ^= c; a = (a - rot(c, 11)) & MASK
    b ^= a; b = (b - rot(a, 25)) & MASK
    c ^= b; c = (c - rot(b, 16)) & MASK
    a ^= c; a = (a - rot(c, 4)) & MASK
    b ^= a; b = (b - rot(a, 14)) & MASK
    c ^= b; c = (c - rot(b, 24)) & MASK
    return c


def hashint8(value):
    """PostgreSQL's hashint8 as a signed int32 (what Citus compares with shard ranges)."""
    lo = value & MASK
    hi = (value >> 32) & MASK
    lo ^= hi if value >= 0 else (~hi & MASK)
    h = hash_uint32(lo)
    return h - (1 << 32) if h >= 1 << 31 else h


def shard_of(value, shards):
    """Citus hash distribution: shard i holds [INT32_MIN + i*2^32/N, INT32_MIN + (i+1)*2^32/N)."""
    return (hashint8(value) + (1 << 31)) * shards >> 32


def check_against_postgres(url):
    sample = [1, 2, 3, 42, 1000, 123456789, 2**31 + 5, -7]
    query = "SELECT " + ", ".join(f"hashint8({v}::bigint)" for v in sample)
    out = subprocess.run(["psql", url, "-XAtc", query], capture_output=True, text=True, check=True).stdout.strip()
    expected = [int(x) for x in out.split("|")]
    actual = [hashint8(v) for v in sample]
    if expected != actual:
        sys.exit(f"hashint8 mismatch: PostgreSQL {expected}, here {actual}")
    print(f"hashint8 checked against PostgreSQL on {len(sample)} values: identical")


def simulate(users, s, shards, seed=20261101):
    weights = [1.0 / (rank ** s) for rank in range(1, users + 1)]
    total = sum(weights)
    ids = list(range(1, users + 1))
    random.Random(seed).shuffle(ids)  # rank r → user id ids[r-1]
    load = [0.0] * shards
    placement = []
    for rank, weight in enumerate(weights):
        shard = shard_of(ids[rank], shards)
        load[shard] += weight / total
        placement.append(shard)
    mean = 1.0 / shards
    # The 10 busiest accounts on shards of their own: what is left for the N shards.
    rest = load[:]
    for rank in range(10):
        rest[placement[rank]] -= weights[rank] / total
    rest_mean = sum(rest) / shards
    return {
        "top": weights[0] / total,
        "hottest": max(load),
        "hot_ratio": max(load) / mean,
        "p50": statistics.median(load) / mean,
        "min": min(load) / mean,
        "cv": statistics.pstdev(load) / mean,
        "isolated": max(rest) / rest_mean,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", default="10000,100000,1000000")
    parser.add_argument("--s", default="0.8,1.0,1.2")
    parser.add_argument("--shards", default="32,64")
    parser.add_argument("--requests", type=float, default=1e9, help="requests per month")
    parser.add_argument("--check-url", help="PostgreSQL URL to check hashint8 against")
    args = parser.parse_args()
    if args.check_url:
        check_against_postgres(args.check_url)
    peak = args.requests / (30 * 86400) * 3
    print(f"{args.requests:.0e} requests/month = {args.requests / (30 * 86400):.0f}/s average, ~{peak:.0f}/s at a 3x peak")
    print()
    header = f"{'users':>9} {'s':>4} {'shards':>6} {'top account':>11} {'hottest':>8} {'hot/mean':>8} {'p50/mean':>8} "
    header += f"{'min/mean':>8} {'cv':>5} {'isolated':>8} {'hot shard peak/s':>16}"
    print(header)
    for users in [int(x) for x in args.users.split(",")]:
        for s in [float(x) for x in args.s.split(",")]:
            for shards in [int(x) for x in args.shards.split(",")]:
                r = simulate(users, s, shards)
                print(f"{users:>9} {s:>4} {shards:>6} {r['top']:>10.2%} {r['hottest']:>8.2%} {r['hot_ratio']:>8.2f} "
                      f"{r['p50']:>8.2f} {r['min']:>8.2f} {r['cv']:>5.2f} {r['isolated']:>8.2f} {r['hottest'] * peak:>16.0f}")


if __name__ == "__main__":
    main()
