"""Prometheus metrics, defined once; the API's /metrics exports the default registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

INGEST_TOTAL = Counter("medshard_ingest_total", "Files offered for ingest, by outcome", ["outcome"])
INGEST_BYTES = Counter("medshard_ingest_bytes_total", "Bytes of accepted files ingested")
INGEST_SECONDS = Histogram("medshard_ingest_seconds", "Time to ingest one file")
READ_TOTAL = Counter("medshard_read_total", "Objects read, by kind", ["kind"])
PUT_TOTAL = Counter("medshard_put_total", "Objects committed by the write path, by kind", ["kind"])
STORE_WRITE_SECONDS = Histogram("medshard_store_write_seconds", "Encrypt+replicate one object")
STORE_WRITE_BYTES = Counter("medshard_store_write_bytes_total", "Plaintext bytes written")
STORE_READ_SECONDS = Histogram("medshard_store_read_seconds", "Fetch+verify+decrypt one object")
STORE_READ_BYTES = Counter("medshard_store_read_bytes_total", "Plaintext bytes read")
CORRUPT_REPLICAS = Counter("medshard_corrupt_replicas_total", "Replicas that failed hash checks")
QUORUM_FAILURES = Counter("medshard_quorum_failures_total", "Chunk writes below the write quorum")
NODE_STATE = Gauge("medshard_node_up", "1 if the storage node is alive", ["node", "site"])
BACKGROUND_QUEUE = Gauge(
    "medshard_background_queue_depth", "Work waiting in a background queue", ["queue"]
)
BACKGROUND_WORK = Counter(
    "medshard_background_work_total",
    "Background work done (copies made, moved, rebalanced, orphans removed...), by kind",
    ["kind"],
)
