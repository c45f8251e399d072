#!/usr/bin/env python3
"""The scale model of docs/scale.md: nodes and Redis shards for N connections under a
workload, from the per-message costs measured on the 2-core development machine
(docs/perf/cluster-shards/, docs/perf/kernel-memory/). Prints the tables in docs/scale.md.

  python3 loadtest/scale_model.py

Every input is a named constant below; change one and rerun to see what moves.
"""
import math

# Measured here (loopback, one core shared by the nodes and Redis; see docs/scale.md).
INGRESS_US = 50.0     # publishing node's CPU per publish (admin API, PUBLISH to Redis): 35-70
RECEIVE_US = 25.0     # a node's CPU per publish it receives from Redis, its first delivery in: 18-28
DELIVERY_US = 1.0     # a node's CPU per further delivery, node busy (0.75-1.2; 0.92 at 10k/topic)
REDIS_PUBLISH_US = 2.1  # a Redis shard's CPU per PUBLISH, busy (pipelined), ...
REDIS_NODE_US = 0.32    # ... plus this per node subscribed to the topic
USER_BYTES = 800      # Stratus RSS per idle subscribed connection (707-809 B measured)
KERNEL_BYTES = 4400   # kernel memory per idle TCP socket (slab, measured; 5.2 KB with noise)
WIRE_BYTES = 66 + 52 + 38  # a 64 B push: WebSocket frame + TCP/IP headers + Ethernet framing

# Assumed, not measured here: the machine a node runs on, and how full to plan it.
NODE_CORES = 16       # cores per node machine, Stratus scaling over them (--workers) linearly
NODE_MEMORY = 32e9    # bytes per node machine
NODE_NIC_BPS = 10e9   # bits/s
NODE_MAX_CONNECTIONS = 1_000_000  # a planning cap per node (19,000 is the most measured here)
TARGET = 0.6          # plan every resource to 60% busy (headroom for bursts, a node or shard lost)
MAX_SHARDS = 64       # Stratus's limit on --broker URLs


def distinct_nodes(subscribers, nodes):
    """Expected nodes holding at least one of a topic's subscribers, placed at random."""
    return nodes * (1 - (1 - 1 / nodes) ** subscribers) if nodes > 1 else 1


def plan(name, connections, topic_size, publishes_per_topic_s, affinity=False):
    """Nodes and shards for `connections`, each on one topic of `topic_size` subscribers
    getting `publishes_per_topic_s` publishes a second. With `affinity` a topic's
    subscribers sit on one node (a load balancer routing by topic)."""
    topics = connections / topic_size
    publishes = topics * publishes_per_topic_s
    deliveries = publishes * topic_size
    # Nodes: enough for the connections first, then iterate on CPU (the receiving nodes per
    # publish depend on the node count).
    by_memory = connections * (USER_BYTES + KERNEL_BYTES) / (NODE_MEMORY * TARGET)
    by_count = connections / NODE_MAX_CONNECTIONS
    nodes = max(1, math.ceil(max(by_memory, by_count)))
    for _ in range(50):
        reached = 1 if affinity else distinct_nodes(topic_size, nodes)
        cpu_us = publishes * (INGRESS_US + reached * RECEIVE_US
                              + (topic_size - reached) * DELIVERY_US)
        cores = cpu_us / 1e6
        by_cpu = cores / (NODE_CORES * TARGET)
        wire_bps = deliveries * WIRE_BYTES * 8
        by_net = wire_bps / (NODE_NIC_BPS * TARGET)
        need = max(1, math.ceil(max(by_memory, by_count, by_cpu, by_net)))
        if need == nodes:
            break
        nodes = need
    reached = 1 if affinity else distinct_nodes(topic_size, nodes)
    redis_cores = publishes * (REDIS_PUBLISH_US + reached * REDIS_NODE_US) / 1e6
    shards = max(1, math.ceil(redis_cores / TARGET))
    limits = {"memory": by_memory, "connections per node": by_count, "node CPU": by_cpu,
              "network": by_net}
    first = max(limits, key=limits.get)
    return {"workload": name, "connections": connections, "publishes_s": publishes,
            "deliveries_s": deliveries, "nodes": nodes, "first": first,
            "node_cores": cores, "nodes_reached": reached, "redis_cores": redis_cores,
            "shards": shards, "net_gbps": wire_bps / 1e9, "limits": limits}


WORKLOADS = [
    ("chat rooms: topics of 10, 1 publish/s each, members anywhere", 10, 1.0, False),
    ("chat rooms, a room's members on one node", 10, 1.0, True),
    ("notifications: a topic per user, 1 publish/min", 1, 1 / 60, False),
    ("broadcast: topics of 100,000, 1 publish/s each", 100_000, 1.0, False),
    ("live feed: topics of 100,000, 10 publishes/s each", 100_000, 10.0, False),
]


def main():
    print("| workload | connections | publishes/s | deliveries/s | node cores (CPU) "
          "| nodes | first limit | nodes a publish reaches | Redis cores | shards "
          "| network, all nodes |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for name, size, rate, affinity in WORKLOADS:
        for n in (1_000_000, 10_000_000, 100_000_000):
            p = plan(name, n, size, rate, affinity)
            shards = f"{p['shards']}" + (" (over 64)" if p["shards"] > MAX_SHARDS else "")
            print(f"| {name} | {n / 1e6:.0f}M | {p['publishes_s']:,.0f} | {p['deliveries_s']:,.0f} "
                  f"| {p['node_cores']:,.1f} | {p['nodes']} | {p['first']} "
                  f"| {p['nodes_reached']:.1f} | {p['redis_cores']:.2f} | {shards} "
                  f"| {p['net_gbps']:.1f} Gbit/s |")


if __name__ == "__main__":
    main()
