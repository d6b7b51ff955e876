"""Composition root of the gateway: builds the objects a replica holds for its lifetime."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from agents.graph import build_graph
from memory.backends import Backends, make_backends
from memory.checkpoints import Checkpointer, open_checkpointer
from memory.db import make_engine, make_session_factory, ping
from memory.migrate import require_up_to_date, upgrade
from memory.pixels import PixelStore
from memory.ratelimit import InProcessTokenBucket, RateLimiter, RedisTokenBucket
from serving.settings import Settings
from tools.healthgpt import HealthGPTClient
from tools.specialists import SpecialistsClient


@dataclass
class GatewayServices:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    model: HealthGPTClient
    checkpointer: Checkpointer
    graph: Any
    backends: Backends
    pixels: PixelStore
    deid_key: bytes
    # Invalid tokens per client address (see serving.auth); None: not throttled.
    auth_failures: RateLimiter | None = None
    # Fine-tune jobs, promotion and rollback (serving.finetune); None where the gateway runs none.
    finetunes: Any = None

    def readiness(self) -> dict[str, str]:
        """Each dependency's state ("ok" or the error); ready when all are ok."""
        checks: dict[str, str] = {}
        redis = self.backends.redis
        for name, check in (
            ("database", lambda: ping(self.engine)),
            ("model", self.model.health),
            ("redis", redis.ping if redis is not None else None),
        ):
            if check is None:
                checks[name] = "not configured (embedded)"
                continue
            try:
                check()
                checks[name] = "ok"
            except Exception as exc:  # noqa: BLE001 - any failure means not ready; report it
                checks[name] = f"error: {type(exc).__name__}: {exc}"[:300]
        return checks

    def close(self) -> None:
        if self.finetunes is not None:
            self.finetunes.close()
        self.checkpointer.close()
        self.backends.close()
        self.engine.dispose()


def prepare_database(settings: Settings) -> Engine:
    """The embedded profile migrates on start; production refuses an unmigrated database."""
    engine = make_engine(settings.resolved_database_url)
    if settings.profile == "embedded":
        upgrade(engine)
    else:
        require_up_to_date(engine)
    return engine


def _deid_key(settings: Settings) -> bytes:
    """The de-identification secret: the same key keeps pseudonyms consistent across uploads."""
    from tools.deid import load_or_create_key, read_key_file

    if settings.deid_key_file is not None:
        return read_key_file(settings.deid_key_file)
    key, _ = load_or_create_key(settings.data_dir / "deid.key")
    return key


def auth_failure_limiter(backends: Backends) -> RateLimiter:
    """Invalid tokens per client address: shared through Redis where the rate limits are."""
    from serving.limits import AUTH_FAILURE_BURST, AUTH_FAILURES_PER_MINUTE

    rate = AUTH_FAILURES_PER_MINUTE / 60.0
    if backends.redis is not None:
        return RedisTokenBucket(backends.redis, AUTH_FAILURE_BURST, rate, prefix="ha:authfail:")
    return InProcessTokenBucket(AUTH_FAILURE_BURST, rate)


def build_services(
    settings: Settings, model: HealthGPTClient, specialists: SpecialistsClient | None = None
) -> GatewayServices:
    engine = make_engine(settings.resolved_database_url)
    require_up_to_date(engine)  # `healthagent serve` migrated (embedded) or checked (production)
    checkpointer = open_checkpointer(settings.resolved_checkpoint_url)
    backends = make_backends(
        settings.redis_url,
        in_process_allowed=settings.profile == "embedded",
        rate_capacity=settings.rate_limit.burst,
        rate_refill_per_s=settings.rate_limit.per_minute / 60.0,
    )
    services = GatewayServices(
        settings=settings,
        engine=engine,
        sessions=make_session_factory(engine),
        model=model,
        checkpointer=checkpointer,
        graph=build_graph(model, checkpointer.saver, specialists),
        backends=backends,
        pixels=PixelStore(settings.resolved_pixel_dir, max_bytes=settings.max_upload_bytes),
        deid_key=_deid_key(settings),
        auth_failures=auth_failure_limiter(backends),
    )
    from serving.finetune import FineTuneService

    services.finetunes = FineTuneService(services)
    services.finetunes.start()
    return services
