"""The bus: how every process talks to Redis on its hot paths.

* :mod:`.url` — ``REDIS_URL`` as redis-py reads it (TCP, TLS, unix socket, ACL user, database).
* :mod:`.publisher` — batched, ordered, pipelined writes that never wait (the gateway's frames,
  a worker replica's outputs and checkpoints).
* :mod:`.reader` — a blocking ``XREAD`` of many streams on one connection, replies parsed by
  hiredis without redis-py's per-entry Python work (a worker replica's shared read, egress).
* :mod:`.retention` — how long ``cs:insights`` keeps its entries: never past what a consumer
  group on it has not acknowledged (up to a cap); the gateways trim it.

Everything else (health checks, the worker runtime's claims and heartbeats) uses redis-py.
"""
