"""How long ``cs:insights`` keeps its entries: the last ``CS_INSIGHTS_MAXLEN`` for readers that
follow it with ``XREAD`` (``callstream tail``), and, for readers that consume it with a consumer
group of their own (the Kafka bridge, a user's service), every entry some group has not
acknowledged yet, up to ``CS_INSIGHTS_MAX_HELD``: a slow or stopped group is not trimmed past.

Writers add to the stream without trimming it; the gateways trim it every few seconds with
:data:`TRIM_INSIGHTS`, one script, so that the groups' state it reads cannot change before it
trims.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

# KEYS[1]: the stream. ARGV[1]: entries always kept (CS_INSIGHTS_MAXLEN); ARGV[2]: entries
# kept at most (CS_INSIGHTS_MAX_HELD). Returns {entries trimmed, of which some group had not
# acknowledged, the groups holding it back (name, unacknowledged entries, ...)}.
#
# A group's unacknowledged entries are its pending ones (delivered to a consumer, not
# acknowledged) and its lag (not delivered yet): the newest `pending + lag` entries as long as
# its consumers acknowledge in order, as every callstream reader does. While every group's
# count fits in the entries always kept, the stream is cut to ARGV[1] (approximately, as XADD's
# MAXLEN ~ would); otherwise it is cut at the oldest entry of the group furthest behind (its
# oldest pending entry, or the last one delivered to it), never keeping more than ARGV[2]. A
# group whose lag Redis cannot tell (after entries were deleted mid-stream) counts as behind.
TRIM_INSIGHTS = """
local key = KEYS[1]
local keep = tonumber(ARGV[1])
local most = tonumber(ARGV[2])
local length = redis.call('XLEN', key)
if length <= keep then return {0, 0} end
local groups = redis.call('XINFO', 'GROUPS', key)
local floor_ms, floor_seq = nil, nil
local behind = {}
local furthest = 0
for _, group in ipairs(groups) do
  local info = {}
  for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
  local unacked = length
  if info['lag'] then unacked = info['pending'] + info['lag'] end
  if unacked > furthest then furthest = unacked end
  local id = info['last-delivered-id']
  if info['pending'] > 0 then
    id = redis.call('XPENDING', key, info['name'])[2]
  end
  local dash = string.find(id, '-', 1, true)
  local ms, seq = tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
  if floor_ms == nil or ms < floor_ms or (ms == floor_ms and seq < floor_seq) then
    floor_ms, floor_seq = ms, seq
  end
  if unacked > keep then
    table.insert(behind, info['name'])
    table.insert(behind, unacked)
  end
end
local trimmed = 0
if furthest <= keep then
  trimmed = redis.call('XTRIM', key, 'MAXLEN', '~', keep)
else
  trimmed = redis.call('XTRIM', key, 'MINID', '~', floor_ms .. '-' .. floor_seq)
end
local lost = 0
if redis.call('XLEN', key) > most then
  lost = redis.call('XTRIM', key, 'MAXLEN', '~', most)
end
local result = {trimmed + lost, lost}
for _, value in ipairs(behind) do table.insert(result, value) end
return result
"""


@dataclass(frozen=True)
class Trimmed:
    """What one trim did."""

    entries: int  # removed in all
    unacknowledged: int  # of which some group had not acknowledged (past CS_INSIGHTS_MAX_HELD)
    behind: dict[str, int]  # groups holding entries beyond the ones always kept: unacked count


def parse_trimmed(reply: list[object]) -> Trimmed:
    """The script's reply (pure)."""
    entries, lost, *rest = reply
    behind = {_text(rest[i]): int(str(rest[i + 1])) for i in range(0, len(rest), 2)}
    return Trimmed(int(str(entries)), int(str(lost)), behind)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class InsightsTrimmer:
    """Runs :data:`TRIM_INSIGHTS` on one Redis (errors are the caller's)."""

    def __init__(self, redis: aioredis.Redis, key: str, keep: int, most: int) -> None:
        self._script = redis.register_script(TRIM_INSIGHTS)
        self._key = key
        self._keep = keep
        self._most = max(most, keep)

    async def trim(self) -> Trimmed:
        reply = await self._script(keys=[self._key], args=[self._keep, self._most])
        return parse_trimmed(list(reply))
