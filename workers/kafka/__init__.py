"""``callstream worker kafka``: cs:insights mirrored to Kafka topics, and fleet-wide analytics
computed there with faust-streaming (docs/kafka.md).

* :mod:`.topics` — which topic, key, headers and value an event becomes (pure).
* :mod:`.config` — the Kafka connection and topic settings from the environment (pure).
* :mod:`.app` — the Faust app: its topics and the analytics agents and tables.
* :mod:`.bridge` — the Redis side: a consumer group on cs:insights, acknowledged only once
  Kafka has acknowledged every record of a batch.
* :mod:`.cli` — the command.
"""
