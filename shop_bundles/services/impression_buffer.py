"""The impression buffer: product pages RPUSH one message per page view to Redis; Celery drains it into PostgreSQL.

Why: writing the impression rows to PostgreSQL in the request cost about
2 ms at p95 (a round trip plus a commit); one ``RPUSH`` to Redis costs a
fraction of that (``benchmarks/impression_overhead.py``). Aggregation and the
database write happen in Celery (task ``drain_impression_buffer``, beat every
5 seconds).

Message (UTF-8 JSON, one per page view, pushed with ``RPUSH`` to
``SHOP_BUNDLES_IMPRESSION_BUFFER_KEY``)::

    {"v": 1, "id": "<32 hex: uuid4 of the message>", "t": "<ISO 8601 aware time>",
     "s": "<session key>", "g": "treatment" | "holdout", "c": <customer pk> | null,
     "k": [<campaign pk>, ...]}

Row ``i`` of a message (campaign ``k[i]``) gets ``OfferEvent.event_id =
uuid5(UUID(id), str(i))`` (:func:`row_event_id`): deterministic, so the drain
inserts with ``ON CONFLICT DO NOTHING`` and draining the same message twice,
or a message that also reached PostgreSQL through the fallback, stores each
row once.

Drain (:func:`impression_buffer_drain`), per batch of
``SHOP_BUNDLES_IMPRESSION_DRAIN_BATCH`` messages: ``LRANGE`` the head of the
list; validate every message (a malformed one is logged with the reason and
moved to the dead-letter list ``<key>:dead``, the others go on); ``INSERT ...
ON CONFLICT DO NOTHING`` in one committed transaction; then a Lua script
removes the batch from the head (``LTRIM``) and appends the dead letters,
atomically, *only if the head still holds exactly that batch* (SHA-1 of the
length-prefixed messages). So a crash between insert and trim re-inserts
nothing twice (the next drain finds the rows present), and two drains at
once (beat, the dashboard, the replay) never trim what the other has not
stored: the loser's compare fails and it reads the new head. Inside an outer
transaction (tests, a caller's ``atomic``) the trim waits for that
transaction's commit (``transaction.on_commit``).

Failure handling on the product page (``services.events.offer_impressions_record``):
Redis gets ``SHOP_BUNDLES_IMPRESSION_BUFFER_TIMEOUT`` (0.1 s) to connect and
answer, no retries; on any Redis error the process skips Redis for
``SHOP_BUNDLES_IMPRESSION_BUFFER_PAUSE`` (10 s; a circuit breaker, so an
outage costs one timeout per process per pause, not one per page) and the
rows are written to PostgreSQL directly, with the message's event ids, as
before the buffer existed. A push that finds more than
``SHOP_BUNDLES_IMPRESSION_BUFFER_MAX_LENGTH`` messages waiting (no drain is
running) pauses the buffer the same way, so Redis memory stays bounded.

Durability trade-off: a buffered impression lives only in Redis until the
next drain (seconds); a Redis crash without persistence loses those, never an
order, a stock change or an outbox event. Readers that need impressions right
after they were recorded drain first (the experiment dashboard, the replay).
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
import uuid
from datetime import datetime
from functools import partial

from django.db import IntegrityError, DataError, connections, router, transaction
from django.utils import timezone

from .. import app_settings
from ..models import BundleCampaign, Customer, OfferEvent
from ..selectors.experiment import GROUPS

logger = logging.getLogger(__name__)

MESSAGE_VERSION = 1
MAX_CAMPAIGNS_PER_MESSAGE = 1000
SESSION_KEY_MAX = 64

# Process-local circuit breaker: monotonic time until which pushes skip Redis, and why.
_paused_until = 0.0
_pause_reason = ""
_clients: dict[tuple[str, float], object] = {}
_clients_lock = threading.Lock()
_scripts: dict[int, object] = {}

# KEYS[1] buffer, KEYS[2] dead letters; ARGV[1] sha1 of the expected head batch, ARGV[2] its length,
# ARGV[3..] dead-letter entries. Returns 1 when trimmed, 0 when the head changed (another drain took it).
_TRIM_SCRIPT = """
local n = tonumber(ARGV[2])
local head = redis.call('LRANGE', KEYS[1], 0, n - 1)
if #head ~= n then return 0 end
local parts = {}
for i = 1, n do parts[i] = tostring(#head[i]) .. ':' .. head[i] end
if redis.sha1hex(table.concat(parts)) ~= ARGV[1] then return 0 end
for i = 3, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('LTRIM', KEYS[1], n, -1)
return 1
"""


class MalformedMessage(ValueError):
    """A buffered message that cannot become impression rows; the text is the reason."""


def buffer_key() -> str:
    """Redis key of the buffer list (``SHOP_BUNDLES_IMPRESSION_BUFFER_KEY``)."""
    return app_settings.get("IMPRESSION_BUFFER_KEY")


def dead_letter_key() -> str:
    """Redis key of the dead-letter list: ``<buffer key>:dead``."""
    return buffer_key() + ":dead"


def redis_client(url: str | None = None, *, timeout: float | None = None):
    """The process's ``redis.Redis`` for ``url`` (one connection pool per URL and timeout, reused).

    Args:
        url: Redis URL; None means :func:`app_settings.impression_buffer_url`.
        timeout: socket connect and read timeout in seconds; None means
            ``SHOP_BUNDLES_IMPRESSION_BUFFER_TIMEOUT``.

    Returns:
        ``redis.Redis`` with no automatic retries (a failure is reported at once).
        redis-py's pool is thread-safe and re-creates its connections in a forked child.

    Raises:
        ValueError: ``url`` is empty (the buffer is disabled) or not a Redis URL.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    url = app_settings.impression_buffer_url() if url is None else url
    if not url:
        raise ValueError("the impression buffer is disabled (SHOP_BUNDLES_IMPRESSION_BUFFER_URL is empty)")
    timeout = float(app_settings.get("IMPRESSION_BUFFER_TIMEOUT") if timeout is None else timeout)
    key = (url, timeout)
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                              retry=Retry(NoBackoff(), 0), health_check_interval=0)
                _clients[key] = client
    return client


def buffer_paused() -> str:
    """Why pushes skip Redis right now ("" when they don't): the circuit breaker's state in this process."""
    return _pause_reason if time.monotonic() < _paused_until else ""


def _pause(reason: str) -> None:
    """Open the circuit breaker for ``SHOP_BUNDLES_IMPRESSION_BUFFER_PAUSE`` seconds; log once per opening."""
    global _paused_until, _pause_reason
    seconds = float(app_settings.get("IMPRESSION_BUFFER_PAUSE"))
    was_open = time.monotonic() < _paused_until
    _paused_until, _pause_reason = time.monotonic() + seconds, reason
    if not was_open:
        logger.warning("impression buffer: %s; writing impressions to the database directly for %g s",
                       reason, seconds)


def reset_breaker() -> None:
    """Close the circuit breaker (tests; an operator after fixing Redis need not: it closes by itself)."""
    global _paused_until, _pause_reason
    _paused_until, _pause_reason = 0.0, ""


def message_encode(*, message_id: uuid.UUID, created_at: datetime, session_key: str, experiment_group: str,
                   customer_id: int | None, campaign_ids: list[int]) -> bytes:
    """One page view's impressions as a buffer message (see the module docstring for the format).

    Returns:
        compact UTF-8 JSON bytes (about 150 bytes for a page with 2 offers).
    """
    return json.dumps({"v": MESSAGE_VERSION, "id": message_id.hex, "t": created_at.isoformat(), "s": session_key,
                       "g": experiment_group, "c": customer_id, "k": campaign_ids},
                      separators=(",", ":")).encode()


def row_event_id(message_id: uuid.UUID, index: int) -> uuid.UUID:
    """``OfferEvent.event_id`` of row ``index`` (0-based position in ``k``) of a message: ``uuid5(id, str(index))``."""
    return uuid.uuid5(message_id, str(index))


def impression_buffer_push(message: bytes) -> bool:
    """``RPUSH`` one message to the buffer, unless the buffer is disabled or paused; never raises.

    One round trip. A Redis error (refused, timeout, ...) or a buffer longer
    than ``SHOP_BUNDLES_IMPRESSION_BUFFER_MAX_LENGTH`` opens the circuit
    breaker (:func:`buffer_paused`).

    Args:
        message: bytes from :func:`message_encode`.

    Returns:
        True when Redis took the message (also when it then reported the
        buffer as over-long: the message is kept and will be drained); False
        when the buffer is disabled or paused, or the push failed: the caller
        writes the rows to the database itself (with the message's event ids,
        since a push that timed out may still have reached Redis).
    """
    url = app_settings.impression_buffer_url()
    if not url or time.monotonic() < _paused_until:
        return False
    import redis

    try:
        length = redis_client(url).rpush(buffer_key(), message)
    except (redis.RedisError, OSError) as exc:
        _pause(f"RPUSH failed ({type(exc).__name__}: {exc})")
        return False
    if length > int(app_settings.get("IMPRESSION_BUFFER_MAX_LENGTH")):
        _pause(f"{length} messages waiting (more than SHOP_BUNDLES_IMPRESSION_BUFFER_MAX_LENGTH): is the "
               f"drain_impression_buffer task running?")
    return True


def impression_buffer_length() -> dict:
    """Messages waiting in the buffer and in its dead-letter list.

    Returns:
        ``{"enabled": bool, "waiting": int, "dead": int}`` (zeros when the buffer is disabled).

    Raises:
        redis.RedisError: Redis is unreachable.
    """
    url = app_settings.impression_buffer_url()
    if not url:
        return {"enabled": False, "waiting": 0, "dead": 0}
    client = redis_client(url, timeout=5.0)
    return {"enabled": True, "waiting": client.llen(buffer_key()), "dead": client.llen(dead_letter_key())}


# --- draining ------------------------------------------------------------------------------------

def message_decode(raw: bytes) -> dict:
    """Validate one buffer message.

    Returns:
        ``{"id": UUID, "created_at": aware datetime, "session_key": str, "experiment_group": str,
        "customer_id": int | None, "campaign_ids": [int, ...]}``.

    Raises:
        MalformedMessage: with the reason (not UTF-8 JSON, wrong version, a missing or ill-typed
            field, a naive time, an unknown group, too long a session key, no campaign ids ...).
    """
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedMessage(f"not UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedMessage(f"not a JSON object but {type(data).__name__}")
    if data.get("v") != MESSAGE_VERSION:
        raise MalformedMessage(f"unknown message version {data.get('v')!r}")
    missing = [f for f in ("id", "t", "s", "g", "k") if f not in data]
    if missing:
        raise MalformedMessage(f"missing field(s) {', '.join(missing)}")
    try:
        message_id = uuid.UUID(hex=data["id"]) if isinstance(data["id"], str) else None
    except ValueError:
        message_id = None
    if message_id is None:
        raise MalformedMessage(f"id {data['id']!r} is not a UUID")
    try:
        created_at = datetime.fromisoformat(data["t"]) if isinstance(data["t"], str) else None
    except ValueError:
        created_at = None
    if created_at is None or created_at.tzinfo is None:
        raise MalformedMessage(f"t {data['t']!r} is not an aware ISO 8601 time")
    session_key, group, customer_id, campaign_ids = data["s"], data["g"], data.get("c"), data["k"]
    if not isinstance(session_key, str) or len(session_key) > SESSION_KEY_MAX:
        raise MalformedMessage(f"s must be a string of at most {SESSION_KEY_MAX} characters")
    if group not in GROUPS:
        raise MalformedMessage(f"g {group!r} is not one of {', '.join(GROUPS)}")
    if customer_id is not None and (type(customer_id) is not int or customer_id < 1):
        raise MalformedMessage(f"c {customer_id!r} is not a customer id")
    if (not isinstance(campaign_ids, list) or not campaign_ids or len(campaign_ids) > MAX_CAMPAIGNS_PER_MESSAGE
            or any(type(c) is not int or c < 1 for c in campaign_ids)):
        raise MalformedMessage(f"k must be a list of 1 to {MAX_CAMPAIGNS_PER_MESSAGE} campaign ids")
    return {"id": message_id, "created_at": created_at, "session_key": session_key, "experiment_group": group,
            "customer_id": customer_id, "campaign_ids": campaign_ids}


def _dead_letter(raw: bytes, reason: str) -> str:
    """The dead-letter entry: JSON ``{"reason", "at", "message" | "message_base64"}`` (the raw message kept)."""
    entry = {"reason": reason, "at": timezone.now().isoformat()}
    try:
        entry["message"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        entry["message_base64"] = base64.b64encode(raw).decode()
    return json.dumps(entry, separators=(",", ":"))


def _batch_digest(raw: list[bytes]) -> str:
    """SHA-1 hex of the length-prefixed messages, as the trim script computes it."""
    sha = hashlib.sha1()
    for message in raw:
        sha.update(str(len(message)).encode() + b":" + message)
    return sha.hexdigest()


def _trim(client, digest: str, count: int, dead: list[str]) -> bool:
    """Remove the drained batch from the head and append its dead letters, atomically, if the head still holds it."""
    script = _scripts.get(id(client))
    if script is None:
        script = _scripts[id(client)] = client.register_script(_TRIM_SCRIPT)
    return bool(script(keys=[buffer_key(), dead_letter_key()], args=[digest, count, *dead]))


def _rows(decoded: dict, campaigns: set[int], customers: set[int]) -> tuple[list[OfferEvent], int]:
    """The impression rows of one valid message; campaigns deleted since are left out (counted)."""
    customer_id = decoded["customer_id"] if decoded["customer_id"] in customers else None
    rows, orphaned = [], 0
    for index, cid in enumerate(decoded["campaign_ids"]):
        if cid not in campaigns:
            orphaned += 1  # the campaign was deleted: its events went with it (CASCADE)
            continue
        rows.append(OfferEvent(kind=OfferEvent.IMPRESSION, campaign_id=cid, session_key=decoded["session_key"],
                               experiment_group=decoded["experiment_group"], customer_id=customer_id,
                               created_at=decoded["created_at"], event_id=row_event_id(decoded["id"], index)))
    return rows, orphaned


def _store(using: str, messages: list[tuple[bytes, list[OfferEvent]]]) -> tuple[int, list[tuple[bytes, str]]]:
    """Insert the batch's rows in one transaction; if the database refuses the batch, message by message.

    Returns:
        ``(rows inserted (not counting rows already present), [(raw message, reason)] refused by the database)``.
        Connection-level errors (``OperationalError``) propagate: the batch stays in Redis.
    """
    from .events import impressions_insert

    connection = connections[using]
    try:
        with transaction.atomic(using=using):
            return impressions_insert(connection, [r for _, rows in messages for r in rows]), []
    except (IntegrityError, DataError):
        pass
    inserted, refused = 0, []
    for raw, rows in messages:
        try:
            with transaction.atomic(using=using):
                inserted += impressions_insert(connection, rows)
        except (IntegrityError, DataError) as exc:
            refused.append((raw, f"database refused it: {type(exc).__name__}: {exc}".strip()))
    return inserted, refused


def impression_buffer_drain(*, max_messages: int | None = None, batch_size: int | None = None) -> dict:
    """Move buffered impression messages into ``OfferEvent`` rows; idempotent and safe to run concurrently.

    Reads the head of the list in batches (``LRANGE``), stores each batch
    (``INSERT ... ON CONFLICT DO NOTHING`` on ``event_id``, one committed
    transaction per batch), then trims it (see the module docstring). Stops
    when the list is empty or ``max_messages`` were read. Malformed messages
    are logged (WARNING, with the reason) and moved to the dead-letter list.

    Args:
        max_messages: read at most this many messages (None: until the list is empty).
        batch_size: messages per batch (None: ``SHOP_BUNDLES_IMPRESSION_DRAIN_BATCH``).

    Returns:
        ``{"enabled": bool, "messages": int, "inserted": int, "already_stored": int, "dead": int,
        "orphaned": int, "contended": int, "waiting": int}``: messages read, rows inserted, rows
        found already stored (a re-drain), messages dead-lettered, rows left out because their
        campaign was deleted, batches another drain trimmed first, and messages still waiting.

    Raises:
        redis.RedisError: Redis is unreachable (nothing is lost: the messages stay in the list).
        django.db.OperationalError: the database is unreachable (likewise).
    """
    result = {"enabled": False, "messages": 0, "inserted": 0, "already_stored": 0, "dead": 0, "orphaned": 0,
              "contended": 0, "waiting": 0}
    url = app_settings.impression_buffer_url()
    if not url:
        return result
    result["enabled"] = True
    batch_size = int(app_settings.get("IMPRESSION_DRAIN_BATCH") if batch_size is None else batch_size)
    client = redis_client(url, timeout=10.0)
    key = buffer_key()
    using = router.db_for_write(OfferEvent)
    in_outer_transaction = connections[using].in_atomic_block
    offset = 0
    while max_messages is None or result["messages"] < max_messages:
        want = batch_size if max_messages is None else min(batch_size, max_messages - result["messages"])
        raw = client.lrange(key, offset, offset + want - 1)
        if not raw:
            break
        decoded: list[tuple[bytes, dict]] = []
        dead: list[tuple[bytes, str]] = []
        for message in raw:
            try:
                decoded.append((message, message_decode(message)))
            except MalformedMessage as exc:
                dead.append((message, str(exc)))
        campaign_ids = {c for _, d in decoded for c in d["campaign_ids"]}
        customer_ids = {d["customer_id"] for _, d in decoded if d["customer_id"] is not None}
        campaigns = set(BundleCampaign.objects.using(using).filter(pk__in=campaign_ids).values_list("pk", flat=True))
        customers = set(Customer.objects.using(using).filter(pk__in=customer_ids).values_list("pk", flat=True)) \
            if customer_ids else set()
        messages, n_rows = [], 0
        for message, d in decoded:
            rows, orphaned = _rows(d, campaigns, customers)
            result["orphaned"] += orphaned
            n_rows += len(rows)
            if rows:
                messages.append((message, rows))
        inserted, refused = _store(using, messages)
        dead.extend(refused)
        refused_ids = {id(message) for message, _ in refused}
        n_rows -= sum(len(rows) for message, rows in messages if id(message) in refused_ids)
        for message, reason in dead:
            logger.warning("impression buffer: malformed message moved to %s: %s; message %r",
                           dead_letter_key(), reason, message[:300])
        result["messages"] += len(raw)
        result["inserted"] += inserted
        result["already_stored"] += max(0, n_rows - inserted)
        result["dead"] += len(dead)
        trim = partial(_trim, client, _batch_digest(raw), len(raw), [_dead_letter(m, r) for m, r in dead])
        if in_outer_transaction:
            transaction.on_commit(trim, using=using)  # the rows are not committed yet: trim after they are
            offset += len(raw)
        elif not trim():
            result["contended"] += 1  # another drain stored and trimmed this head first: read the new head
            continue
        if len(raw) < want:
            break
    if result["orphaned"]:
        logger.info("impression buffer: %d impression rows left out (their campaign was deleted)", result["orphaned"])
    result["waiting"] = max(0, client.llen(key) - offset)
    return result
