"""Tenants and their API keys.

A key looks like `tdm-<43 url-safe characters>` (256 random bits). Only its SHA-256 digest is
ever stored; a key is shown once, when it is created, and never logged (the log redaction
already blanks `tdm-...` strings). A fast hash is the right one here: the key is random, not a
password, so there is nothing for a slow hash to protect against, and the gateway hashes on
every request. Keys are named in listings and on revocation by their *key id*, the first 12 hex
digits of the digest, which is safe to show.

A tenant has its allowed models (pool names or aliases; none listed: every model) and its
limits: requests per minute, tokens per minute, concurrent streams (0: unlimited).

A key has a role: `tenant` (the default, and what a key stored before roles existed reads as),
`edge` or `admin`. An admin key is an operator's: it may read the gateway's ops page (`/ops/`,
which no other key may) and otherwise calls the API as its tenant. An edge key is an edge
agent's credential: it may call `Heartbeat` (a tenant key may not), and still belongs to a
tenant, whose models and limits apply to the user work the edge forwards. An edge key may name
the one edge it speaks for (`edge`); it can then report only that edge's status.

Redis layout (prefix `tandem:` by default):

    {p}key:<sha256>      hash  tenant, id, label, created,    one live key; deleted on revoke
                               role, edge (absent: tenant)
    {p}keys              hash  <key id> -> JSON record         every key, revoked ones too
    {p}tenant:<name>     hash  models, rpm, tpm, streams       a tenant's settings
    {p}tenants           set   tenant names
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson

from gateway.state.redis_conn import Client, RedisState, text

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

KEY_PREFIX = "tdm-"
_KEY = re.compile(r"^tdm-[A-Za-z0-9_-]{20,128}$")
TENANT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# An edge id a key may be bound to: what `edge_id` holds in a heartbeat (the edge's hostname by
# default), printable and short.
EDGE_NAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,256}$")

Role = Literal["tenant", "edge", "admin"]
ROLES: tuple[Role, ...] = ("tenant", "edge", "admin")


def new_key() -> str:
    """A fresh API key (shown to its owner once, stored only as its digest)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def well_formed(key: str) -> bool:
    """Whether `key` could be a Tandem key (garbage is refused without a lookup)."""
    return _KEY.match(key) is not None


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(digest: str) -> str:
    return digest[:12]


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    models: frozenset[str] = frozenset()  # empty: every model
    rpm: int = 0  # requests per minute; 0: unlimited
    tpm: int = 0  # tokens per minute (prompt plus completion); 0: unlimited
    streams: int = 0  # requests in flight at once; 0: unlimited

    def allows(self, *names: str) -> bool:
        """Whether any of `names` (a model and its pool's other names) is allowed."""
        return not self.models or any(n in self.models for n in names)

    @property
    def limited(self) -> bool:
        return bool(self.rpm or self.tpm or self.streams)

    def describe(self) -> str:
        models = ",".join(sorted(self.models)) or "*"
        return f"models={models} rpm={self.rpm or '-'} tpm={self.tpm or '-'} streams={self.streams or '-'}"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a live key speaks for: its tenant, its role, and for an edge key the edge it is bound
    to ("" when it may speak for any edge)."""

    tenant: Tenant
    role: Role = "tenant"
    edge: str = ""

    @property
    def is_edge(self) -> bool:
        return self.role == "edge"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What is known about a key, never the key itself."""

    id: str
    tenant: str
    digest: str
    label: str = ""
    created: float = 0.0
    revoked: float = 0.0  # when it was revoked; 0: live
    role: Role = "tenant"
    edge: str = ""  # an edge key's edge id; "": any edge

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "tenant": self.tenant,
                "digest": self.digest,
                "label": self.label,
                "created": self.created,
                "revoked": self.revoked,
                "role": self.role,
                "edge": self.edge,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> KeyRecord:
        data = orjson.loads(raw)
        return cls(
            id=data["id"],
            tenant=data["tenant"],
            digest=data["digest"],
            label=data.get("label", ""),
            created=float(data.get("created", 0)),
            revoked=float(data.get("revoked", 0)),
            role=_role(data.get("role")),
            edge=str(data.get("edge") or ""),
        )


def _role(value: object) -> Role:
    """A stored role; anything else (a key from before roles) is a tenant key."""
    if value in ("edge", b"edge"):
        return "edge"
    return "admin" if value in ("admin", b"admin") else "tenant"


def check_key_role(role: str, edge: str = "") -> tuple[Role, str]:
    """A new key's (role, edge), validated: naming an edge makes it an edge key."""
    if role not in ROLES:
        raise ValueError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    if edge and not EDGE_NAME.match(edge):
        raise ValueError(f"edge {edge!r}: use 1-256 letters, digits, '.', '_', ':', '@' or '-'")
    if edge and role != "edge":
        raise ValueError("only an edge key names an edge (role edge)")
    return _role(role), edge


class TenantStore(Protocol):
    """Where keys and tenants live: Redis, or this process (`MemoryTenants`)."""

    async def lookup(self, digest: str) -> Principal | None:
        """Who the live key with this digest speaks for; None when there is none."""
        ...

    async def create_key(
        self, tenant: str, label: str = "", *, role: Role = "tenant", edge: str = ""
    ) -> tuple[str, KeyRecord]: ...

    async def keys(self, tenant: str | None = None) -> list[KeyRecord]: ...

    async def revoke(self, key_id_or_key: str) -> KeyRecord | None: ...

    async def tenant(self, name: str) -> Tenant | None: ...

    async def tenants(self) -> list[Tenant]: ...

    async def set_tenant(self, tenant: Tenant) -> None: ...


def check_tenant_name(name: str) -> str:
    if not TENANT_NAME.match(name):
        raise ValueError(f"tenant name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def _revocation_target(key_id_or_key: str) -> str:
    """A key id from a key id or a whole key (whichever the operator has at hand)."""
    text = key_id_or_key.strip()
    return key_id(key_digest(text)) if text.startswith(KEY_PREFIX) else text


class MemoryTenants:
    """Keys and tenants in this process: a gateway without Redis (`auth.tenants`), and tests."""

    def __init__(self) -> None:
        self._tenants: dict[str, Tenant] = {}
        self._records: dict[str, KeyRecord] = {}  # key id -> record

    def add_tenant(self, tenant: Tenant) -> None:
        self._tenants[check_tenant_name(tenant.name)] = tenant

    def add_digest(
        self, tenant: str, digest: str, label: str = "", *, role: Role = "tenant", edge: str = ""
    ) -> KeyRecord:
        """Registers a key known only by its digest (from configuration)."""
        role, edge = check_key_role(role, edge)
        record = KeyRecord(id=key_id(digest), tenant=tenant, digest=digest, label=label, role=role, edge=edge)
        self._records[record.id] = record
        return record

    async def lookup(self, digest: str) -> Principal | None:
        record = self._records.get(key_id(digest))
        if record is None or record.digest != digest or record.revoked:
            return None
        return Principal(self._tenants.get(record.tenant, Tenant(record.tenant)), record.role, record.edge)

    async def create_key(
        self, tenant: str, label: str = "", *, role: Role = "tenant", edge: str = ""
    ) -> tuple[str, KeyRecord]:
        check_tenant_name(tenant)
        role, edge = check_key_role(role, edge)
        key = new_key()
        digest = key_digest(key)
        record = KeyRecord(key_id(digest), tenant, digest, label, time.time(), role=role, edge=edge)
        self._records[record.id] = record
        self._tenants.setdefault(tenant, Tenant(tenant))
        return key, record

    async def keys(self, tenant: str | None = None) -> list[KeyRecord]:
        return sorted(
            (r for r in self._records.values() if tenant is None or r.tenant == tenant),
            key=lambda r: (r.tenant, r.created, r.id),
        )

    async def revoke(self, key_id_or_key: str) -> KeyRecord | None:
        record = self._records.get(_revocation_target(key_id_or_key))
        if record is None:
            return None
        if not record.revoked:
            record = replace(record, revoked=time.time())
            self._records[record.id] = record
        return record

    async def tenant(self, name: str) -> Tenant | None:
        return self._tenants.get(name)

    async def tenants(self) -> list[Tenant]:
        return sorted(self._tenants.values(), key=lambda t: t.name)

    async def set_tenant(self, tenant: Tenant) -> None:
        self.add_tenant(tenant)


class RedisTenants:
    """Keys and tenants in Redis, shared by every gateway replica and the `tandem gateway keys`
    commands. Lookups are cached by `gateway.auth.Authenticator`, not here."""

    def __init__(self, state: RedisState) -> None:
        self._state = state
        self._index = state.key("keys")
        self._names = state.key("tenants")

    def _live(self, digest: str) -> str:
        return self._state.key("key", digest)

    def _tenant(self, name: str) -> str:
        return self._state.key("tenant", name)

    async def lookup(self, digest: str) -> Principal | None:
        async def call(r: Client) -> Principal | None:
            found, role, edge = await r.hmget(self._live(digest), ["tenant", "role", "edge"])
            if found is None:
                return None
            name = text(found)
            tenant = _tenant_from(name, await r.hgetall(self._tenant(name)))
            return Principal(tenant, _role(role), text(edge) if edge else "")

        return await self._state.run(call)

    async def create_key(
        self, tenant: str, label: str = "", *, role: Role = "tenant", edge: str = ""
    ) -> tuple[str, KeyRecord]:
        check_tenant_name(tenant)
        role, edge = check_key_role(role, edge)
        key = new_key()
        digest = key_digest(key)
        record = KeyRecord(key_id(digest), tenant, digest, label, time.time(), role=role, edge=edge)

        async def call(r: Client) -> bool:
            # The id is 48 bits of the digest: a clash is all but impossible, and refused if it comes.
            if not await r.hsetnx(self._index, record.id, record.to_json()):
                return False
            await r.hset(
                self._live(digest),
                mapping={
                    "tenant": tenant,
                    "id": record.id,
                    "label": label,
                    "created": record.created,
                    "role": role,
                    "edge": edge,
                },
            )
            await r.hsetnx(self._tenant(tenant), "rpm", 0)  # the tenant exists from now on
            await r.sadd(self._names, tenant)
            return True

        if not await self._state.run(call):
            return await self.create_key(tenant, label, role=role, edge=edge)
        return key, record

    async def keys(self, tenant: str | None = None) -> list[KeyRecord]:
        async def call(r: Client) -> dict[bytes | str, bytes | str]:
            return await r.hgetall(self._index)

        records = [KeyRecord.from_json(raw) for raw in (await self._state.run(call)).values()]
        mine = (r for r in records if tenant is None or r.tenant == tenant)
        return sorted(mine, key=lambda r: (r.tenant, r.created, r.id))

    async def revoke(self, key_id_or_key: str) -> KeyRecord | None:
        target = _revocation_target(key_id_or_key)

        async def call(r: Client) -> KeyRecord | None:
            raw = await r.hget(self._index, target)
            if raw is None:
                return None
            record = KeyRecord.from_json(raw)
            await r.delete(self._live(record.digest))  # lookups stop finding it at once
            if not record.revoked:
                record = replace(record, revoked=time.time())
                await r.hset(self._index, record.id, record.to_json())
            return record

        return await self._state.run(call)

    async def tenant(self, name: str) -> Tenant | None:
        async def call(r: Client) -> dict[bytes | str, bytes | str]:
            return await r.hgetall(self._tenant(name))

        fields = await self._state.run(call)
        return _tenant_from(name, fields) if fields else None

    async def tenants(self) -> list[Tenant]:
        async def call(r: Client) -> list[Tenant]:
            names = sorted(text(n) for n in await r.smembers(self._names))
            found = [await r.hgetall(self._tenant(n)) for n in names]
            return [_tenant_from(n, fields) for n, fields in zip(names, found, strict=True) if fields]

        return await self._state.run(call)

    async def set_tenant(self, tenant: Tenant) -> None:
        check_tenant_name(tenant.name)
        mapping: dict[FieldT, EncodableT] = {
            "models": ",".join(sorted(tenant.models)),
            "rpm": tenant.rpm,
            "tpm": tenant.tpm,
            "streams": tenant.streams,
        }

        async def call(r: Client) -> None:
            await r.hset(self._tenant(tenant.name), mapping=mapping)
            await r.sadd(self._names, tenant.name)

        await self._state.run(call)


def _tenant_from(name: str, fields: dict[Any, Any]) -> Tenant:
    def field(name: str) -> str:
        return text(fields.get(name.encode(), fields.get(name, b"")))

    def number(name: str) -> int:
        try:
            return max(0, int(field(name) or 0))
        except ValueError:
            return 0

    models = frozenset(m for m in field("models").split(",") if m)
    return Tenant(name=name, models=models, rpm=number("rpm"), tpm=number("tpm"), streams=number("streams"))
