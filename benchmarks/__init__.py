"""Fibric benchmark harness (issue 5).

``python -m benchmarks [SCENARIO ...] [--quick] [--out DIR]`` (``fibric bench``).

Scenarios implemented so far:

- ``ceilings``: raw aiokafka produce, consume and consume→produce msgs/s against a fresh embedded
  broker (the Tansu binary ``fibric up`` uses, started with the same flags), and ClickHouse bulk
  insert rows/s through clickhouse-connect on a chDB DSN, for the events row shape;
- ``naive``: a one-event-at-a-time Faust pipeline doing the ingest agent's logical work (validate,
  one table write, one send per event) against the same broker: the peer baseline;
- ``S1``: Kafka-native ingest through a fresh ``fibric up``: producer → events in ClickHouse;
- ``S2``: HTTP ingest, ``POST /v1/events`` at 64 connections with ``wrk`` on its own core;
- ``naive_exec``: a one-action-at-a-time Faust executor (table write + MCP call + send per
  action) against the same broker and connector: S3's peer baseline;
- ``config``: control-plane write round trip (create an operator → readable), p50/p99;
- ``S3``–``S7`` (benchmarks/loop.py, one fresh stack shared by them): governed actions with a side
  effect, BLOCK/DEDUP dispositions, the 657 flood, event → receipt latency at half of S3's peak,
  and recovery after ``kill -9`` of the worker. Peak RSS of worker and api is reported (S10);
- ``S3L`` (benchmarks/s3l.py, on the loop stack): governed actions through cn-magento against the
  fake Magento taking 50 ms per write, against 0.8 × (in-flight limit ÷ latency), with the
  store's own check that no entity ever had two requests in flight;
- ``S3W`` and ``SSE`` (benchmarks/push.py, issue 11): S3 with 0, 1 and 10 webhook endpoints
  (ratios) and event → delivery latency at half of S3's peak; 1,000 SSE streams on one api
  process (fan-out latency, api CPU per event against 0 streams);
- ``globs``: µs per event-type glob match, 1–20 segments, typical and hostile (in-process).
- ``policy`` (benchmarks/policy.py): µs per action for the judge with 1, 10 and 100 tenant
  guardrail rules and for the executor's budget step with 1 and 10 budgets (in-process);
- ``S4G`` (benchmarks/policy.py, on the loop stack): S4 and S3 without, then with, tenant
  policies and budgets, as same-run ratios (issue 12: S4 with ≥ 0.8 × S4 without).
- ``replay``: policy replay over 1M receipt rows in chDB (in-process, benchmarks/replay.py):
  receipt rows re-judged per second against the naive one-judge-per-action replay.

Every throughput scenario (naive, naive_exec, S1, S2, S3, S4, S3L) reports ``cpu_us_per_item``:
µs of CPU per event / action / request summed over every process of the run (broker, worker(s)
with their connector subprocesses, api, ``fibric up``), the load generator apart, next to the
raw-client floor of the same run (the ceilings' consume→produce µs per message).

Every scenario prints one machine-readable line; results go to ``results.json`` and
``results.md`` in the output directory. Nothing here asserts on timing.
"""

# in the order they run (S9 before S7: S7 then kills one of S9's two workers)
SCENARIOS = (
    "globs",
    "policy",
    "replay",
    "ceilings",
    "naive",
    "naive_exec",
    "S1",
    "S2",
    "config",
    "S3",
    "S4",
    "S5",
    "S6",
    "S3L",
    "S4G",
    "S3W",
    "SSE",
    "S8",
    "S9",
    "S7",
)
LOOP_SCENARIOS = ("config", "S3", "S4", "S5", "S6", "S3L", "S4G")
