"""Names and defaults shared by the API and the workers, in one place.

Redis key layout (``{id}`` is a job id, ``{name}`` a worker name):

- ``krypton:jobs`` - the stream of job ids, consumed by the ``workers`` group
- ``krypton:job:{id}`` - the job document (JSON), with the job's TTL
- ``krypton:image:{id}:{n}`` - the uploaded image(s) (patient data), same TTL
- ``krypton:result:{id}`` - the heatmap as ``.npy`` bytes, same TTL
- ``krypton:partial:{id}`` - the heatmap so far while the job runs (``.npy``), same TTL
- ``krypton:worker:{name}`` - a worker's heartbeat, expiring when it stops beating
- ``krypton:workers`` - sorted set of worker names by last heartbeat time
- ``krypton:dataset:{name}`` - a dataset's tuned approximation config (JSON), no expiry
- ``krypton:rate:{account}`` - sorted set of one account's submissions in the last minute
- ``krypton:account:{account}:jobs`` - sorted set of the account's retained jobs by expiry
- ``krypton:account:{account}:bytes`` - hash of their image bytes, and the ``_total``
- ``krypton:account:{account}:active`` - set of the account's unfinished jobs
- ``krypton:epoch`` - when this Redis started afresh (ms): jobs older were lost with it
- ``krypton:changes`` - pub/sub channel: the id of each job just written, to wake waiters

An account is an API key's id, or running open a client address.
"""

from __future__ import annotations

KEY_PREFIX = "krypton"
STREAM = f"{KEY_PREFIX}:jobs"
GROUP = "workers"
JOB_KEY = f"{KEY_PREFIX}:job:{{}}"
IMAGE_KEY = f"{KEY_PREFIX}:image:{{}}"
RESULT_KEY = f"{KEY_PREFIX}:result:{{}}"
PARTIAL_KEY = f"{KEY_PREFIX}:partial:{{}}"
WORKER_KEY = f"{KEY_PREFIX}:worker:{{}}"
WORKERS_KEY = f"{KEY_PREFIX}:workers"
DATASET_KEY = f"{KEY_PREFIX}:dataset:{{}}"
RATE_KEY = f"{KEY_PREFIX}:rate:{{}}"
ACCOUNT_JOBS_KEY = f"{KEY_PREFIX}:account:{{}}:jobs"
ACCOUNT_BYTES_KEY = f"{KEY_PREFIX}:account:{{}}:bytes"
ACCOUNT_ACTIVE_KEY = f"{KEY_PREFIX}:account:{{}}:active"
EPOCH_KEY = f"{KEY_PREFIX}:epoch"
CHANGES_CHANNEL = f"{KEY_PREFIX}:changes"

DEFAULT_RESULT_TTL_SECONDS = 24 * 3600
DEFAULT_MAX_UPLOAD_BYTES = 32 * 1024 * 1024
DEFAULT_RATE_LIMIT_PER_MINUTE = 120
DEFAULT_MAX_QUEUE_LENGTH = 1000
DEFAULT_MAX_JOBS_PER_KEY = 200
"""Unfinished jobs of one key (or, running open, one address): a fifth of the queue."""
DEFAULT_MAX_BYTES_PER_KEY = 512 * 1024**2
"""Image bytes one key's unexpired jobs keep: 64 of the largest uploads."""
REDIS_MEMORY_RESERVE_BYTES = 64 * 1024**2
"""What admission leaves free below Redis's ``maxmemory``, beyond the upload itself, for
results, progress and the workers' writes."""
REDIS_MAX_CONNECTIONS = 64
"""Connections one process keeps to Redis; a burst of requests waits for a free one."""
REDIS_POOL_WAIT_SECONDS = 30.0
"""How long a request waits for a free connection before it is answered 503 (busy)."""
REDIS_SOCKET_TIMEOUT_SECONDS = 5.0
"""Longest a command (or a connection attempt) waits on Redis: a Redis that hangs, rather
than goes away, is answered 503 after this, not when it comes back. It exceeds the
longest blocking read (a worker's claim blocks for 1 s)."""
RETRY_AFTER_SECONDS = 5
"""What a 503 (and a quota's 429) tells the client to wait before trying again."""
DEFAULT_MAX_JOB_GFLOP = 200_000.0
"""About VGG16 at stride 2 (11,000 positions at 15.5 GFLOP); InceptionV3 at patch 1
stride 1 (89,000 positions, an hour of one worker) books 2.5 times as much."""
DEFAULT_JOB_TIMEOUT_SECONDS = 900.0
RATE_WINDOW_SECONDS = 60
OVERLAY_SIDE, MAX_OVERLAY_SIDE = 1024, 2048
"""Longer side of an overlay by default and at most: a 50-megapixel photograph drawn at
its own size would cost the API gigabytes. An upload larger than the most is kept
beside a copy reduced to it, from which overlays are drawn."""
MAX_WAIT_SECONDS = 60
"""Upper bound of ``Prefer: wait=N``, so a request never ties up a connection for long."""
CHANGES_FALLBACK_SECONDS = 1.0
"""Longest a waiter goes without reading its job: Redis's pub/sub delivers at most once
(a notification sent while the listener reconnects is lost), and an expiry writes nothing."""

HEARTBEAT_SECONDS = 2.0
HEARTBEAT_TTL_SECONDS = 10
"""A worker whose heartbeat is this old is presumed dead."""
CLAIM_IDLE_MS = 30_000
"""A job claimed but untouched this long belongs to a dead worker and is reclaimed."""
MAX_ATTEMPTS = 3
"""A job that killed this many workers is failed rather than handed to another."""
SHUTDOWN_WAIT_SECONDS = 5.0
"""How long a stopping worker waits for its heartbeat and claim loops, and to retire."""
PRUNE_EVERY_BEATS = 15
"""Workers forget dead workers' entries in the consumer group every 15 heartbeats (30 s)."""
PARTIAL_SIDE = 128
"""Heatmaps so far are stored (and streamed) at most this many cells a side."""
PROGRESS_INTERVAL_SECONDS = 0.5
"""Workers write progress at most this often (the claim is refreshed separately)."""
