"""The one settings object: a YAML file, overridden by ``HEALTHAGENT_*`` environment variables.

Precedence (highest first): explicit keyword arguments, environment, YAML file, defaults.
Nested keys use ``__`` in the environment, e.g. ``HEALTHAGENT_RAY__NUM_CPUS=4``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from models.limits import EngineLimits
from tools.healthgpt import CascadeSettings

if TYPE_CHECKING:
    from tools.pacs import PacsConfig

CONFIG_ENV = "HEALTHAGENT_CONFIG"


class RaySettings(BaseModel):
    """How ``healthagent serve`` reaches Ray. Replicas, resources and autoscaling are deployment options:
    they live only in the Serve config (``configs/serve/*.yaml``)."""

    model_config = ConfigDict(extra="forbid")  # an old settings file naming replicas fails loudly

    address: str | None = Field(
        default=None, description="Ray cluster address; empty starts a local Ray in this process."
    )
    num_cpus: int | None = Field(default=None, ge=1, description="CPUs for a local Ray (None = all).")
    check_resources: bool = Field(
        default=True,
        description="Before deploying, check that every replica fits the cluster's nodes and stop with the "
        "deployment and the missing resource named. Turn off on clusters whose autoscaler adds nodes.",
    )
    startup_timeout_s: float = Field(
        default=600.0, gt=0, description="Give up (and say which deployment is not ready) after this long."
    )


class RateLimitSettings(BaseModel):
    """Per-user token bucket over the authenticated API (shared through Redis where configured)."""

    burst: int = Field(default=20, ge=1, description="Requests a user may send at once.")
    per_minute: float = Field(default=60.0, gt=0, description="Sustained requests per minute per user.")


class FineTuneSettings(BaseModel):
    """Feedback refresh jobs (``POST /v1/admin/finetunes``): where they run and how they train. The stage
    3 preset of the paper (models.training.presets) gives every hyperparameter left empty here."""

    model_config = ConfigDict(extra="forbid")

    executor: Literal["auto", "ray", "process", "thread"] = Field(
        default="auto",
        description="auto: a Ray Train TorchTrainer when the gateway runs on Ray and the cluster has room "
        "for its workers when the job starts, else a child process. ray: Ray Train, waiting for room up to "
        "queue_timeout_s. "
        "process: a child process of the gateway (killable, never holds the GIL of serving). thread: in the "
        "gateway process (tests, debugging).",
    )
    num_workers: int = Field(
        default=1, ge=1, le=1, description="Ray Train workers (the refresh trains one plugin on one device)."
    )
    use_gpu: bool = Field(default=False, description="Ray Train workers ask for a GPU each.")
    cpus_per_worker: float = Field(default=1.0, gt=0)
    queue_timeout_s: float = Field(
        default=900.0,
        gt=0,
        description="A Ray job waits this long at most for its workers' CPUs/GPUs in the cluster, then "
        "fails naming the resources it waited for (an autoscaler has this long to add a node).",
    )
    torch_threads: int | None = Field(default=None, ge=1, description="torch threads in the trainer.")
    epochs: int | None = Field(default=None, ge=1, le=1000)
    batch_size: int | None = Field(default=None, ge=1)
    micro_batch_size: int = Field(default=4, ge=1)
    lr: float | None = Field(default=None, gt=0)
    projector_lr: float | None = Field(default=None, ge=0)
    dropout: float | None = Field(default=None, ge=0, le=1)
    schedule: Literal["warmup_cosine", "constant"] | None = None
    warmup_ratio: float | None = Field(default=None, ge=0, le=1)
    seed: int = 0
    min_examples: int = Field(default=8, ge=1, description="Training rows a job needs at the least.")
    heldout_fraction: float = Field(default=0.2, ge=0, lt=1)
    regression_set: Path | None = Field(
        default=None, description="A frozen multiple-choice VQA set (tools.finetune.vqa); empty = shipped."
    )
    heldout_margin: float = Field(default=0.02, description="Gate (a): nats/token the challenger must gain.")
    regression_tolerance: float = Field(default=0.02, ge=0, le=1)
    reliance_min: float = Field(default=0.01, ge=0)
    reliance_tolerance: float = Field(default=0.2, ge=0, le=1)
    resume_on_start: bool = Field(
        default=True,
        description="A job whose runner went away (gateway restart) is resumed from its last checkpoint; "
        "off: it is marked failed with that reason.",
    )
    stale_after_s: float = Field(
        default=60.0, gt=0, description="A job without a heartbeat for this long has lost its runner."
    )
    heartbeat_s: float = Field(default=2.0, gt=0)


class PacsSettings(BaseModel):
    """The PACS the physicians work in, over DICOMweb: studies are imported from it and signed reports go
    back to it (``pacs.url`` empty: no PACS, and the import and search routes answer 404)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        default="",
        description="DICOMweb root, e.g. http://orthanc:8042/dicom-web (env HEALTHAGENT_PACS__URL).",
    )
    username: str | None = Field(default=None, description="HTTP basic auth user; set with password.")
    password: SecretStr | None = None
    timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="Per connect and per wait for data, not a whole transfer."
    )
    retries: int = Field(default=1, ge=0, le=5, description="Extra attempts on a connection error/5xx.")
    max_instances: int = Field(
        default=2000, ge=1, description="A series with more instances than this is refused at import."
    )
    read_slices: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Slices of a series (or frames of a multi-frame object) the AI reads, evenly spaced.",
    )
    organization: str = Field(default="Health Agent", description="Verifying organization in the SR.")
    outbox_poll_s: float = Field(default=5.0, gt=0, description="How often the outbox worker looks.")
    retry_initial_s: float = Field(default=5.0, gt=0, description="First back-off of a failed push.")
    retry_max_s: float = Field(default=600.0, gt=0, description="Longest back-off between two attempts.")

    @model_validator(mode="after")
    def _credentials_in_pairs(self) -> PacsSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("pacs: set both username and password, or neither")
        return self

    @property
    def configured(self) -> bool:
        return bool(self.url.strip())

    def client_config(self) -> PacsConfig:
        """What the DICOMweb client takes (tools.pacs is imported here, on first use, not at start)."""
        from tools.pacs import PacsConfig

        return PacsConfig(
            url=self.url,
            timeout_s=self.timeout_s,
            username=self.username,
            password=self.password,
            retries=self.retries,
        )


class Settings(BaseSettings):
    """Everything the service needs to start. See ``configs/local.yaml`` for the embedded profile."""

    model_config = SettingsConfigDict(env_prefix="HEALTHAGENT_", env_nested_delimiter="__", extra="forbid")

    profile: Literal["embedded", "production"] = "embedded"
    data_dir: Path = Path("var")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty = SQLite file under data_dir.")
    checkpoint_url: str = Field(
        default="",
        description="LangGraph checkpointer: a postgresql:// URL or a SQLite path; empty = "
        "the database_url when it is PostgreSQL, else SQLite under data_dir.",
    )
    redis_url: str = Field(default="", description="redis:// URL; empty = in-process (embedded).")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    model_spec: str = Field(
        default="tiny",
        description="'tiny' (random demo weights built from a seed) or a path to a model spec YAML.",
    )
    model_seed: int = 0
    cascade: CascadeSettings = CascadeSettings()
    escalation_model_spec: str | None = Field(
        default=None,
        description="The larger model the cascade escalates to (e.g. the L14 preset); 'tiny' = a second "
        "demo model built from escalation_model_seed.",
    )
    escalation_model_seed: int = 1
    max_new_tokens: int = Field(default=48, ge=1, le=4096)
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    max_message_chars: int = Field(default=8000, ge=1)
    bootstrap_token: SecretStr | None = Field(
        default=None, description="Bootstrap admin token; generated and printed once if unset."
    )
    trusted_proxies: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="Load balancers / reverse proxies in front of the gateway (addresses or CIDRs). A "
        "request from one of them is attributed to the last address in X-Forwarded-For that is not a "
        "trusted proxy, so invalid-token throttling counts clients, not the proxy. Empty: the peer "
        "address, and X-Forwarded-For is ignored (anyone can write it).",
    )
    admin_phi_access: bool = Field(
        default=False, description="Let admins read (never write) patient records. Off: admins see no PHI."
    )
    burned_in: Literal["refuse", "blank"] = Field(
        default="refuse",
        description="DICOM that may carry burned-in text (BurnedInAnnotation YES, US, SC …): refuse it, or "
        "blank the bands where such text usually is (a heuristic) before a model sees it.",
    )
    deid_key_file: Path | None = Field(
        default=None, description="Secret for pseudonyms, UIDs and date shifts; empty = data_dir/deid.key."
    )
    engine: EngineLimits = EngineLimits()
    rate_limit: RateLimitSettings = RateLimitSettings()
    pixel_dir: Path | None = Field(
        default=None, description="Content-addressed store of uploaded images; empty = data_dir/pixels."
    )
    ray: RaySettings = RaySettings()
    finetune: FineTuneSettings = FineTuneSettings()
    pacs: PacsSettings = PacsSettings()

    @field_validator("bootstrap_token", mode="after")
    @classmethod
    def _strong_bootstrap_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None  # empty (e.g. an unset compose variable) means "generate one"
        if len(value.get_secret_value()) < 24:
            raise ValueError("bootstrap_token must be at least 24 characters")
        return value

    @model_validator(mode="after")
    def _cascade_needs_a_second_model(self) -> Settings:
        if self.cascade.enabled and not self.escalation_model_spec:
            raise ValueError("cascade.enabled needs an escalation_model_spec")
        return self

    @model_validator(mode="after")
    def _production_needs_real_services(self) -> Settings:
        if self.profile == "production":
            if not self.database_url.startswith("postgresql"):
                raise ValueError("profile 'production' needs a PostgreSQL database_url")
            if not self.redis_url:
                raise ValueError("profile 'production' needs a redis_url")
        return self

    def with_absolute_paths(self) -> Settings:
        """Replicas may run with another working directory: ship absolute paths only."""
        updates: dict[str, object] = {"data_dir": self.data_dir.resolve()}
        if self.model_spec != "tiny":
            updates["model_spec"] = str(Path(self.model_spec).resolve())
        if self.escalation_model_spec not in (None, "tiny"):
            updates["escalation_model_spec"] = str(Path(self.escalation_model_spec).resolve())
        return self.model_copy(update=updates)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'healthagent.db').resolve()}"

    @property
    def resolved_checkpoint_url(self) -> str:
        if self.checkpoint_url:
            return self.checkpoint_url
        if self.resolved_database_url.startswith("postgresql"):
            return self.resolved_database_url
        return str((self.data_dir / "checkpoints.sqlite").resolve())

    @property
    def resolved_pixel_dir(self) -> Path:
        return (self.pixel_dir or self.data_dir / "pixels").resolve()

    @property
    def adapter_dir(self) -> Path:
        """Registered adapters, content-addressed: ``<plugin>/<sha256 of the weights>/``."""
        return (self.data_dir / "adapters").resolve()

    @property
    def finetune_dir(self) -> Path:
        """Each job's dataset snapshot, checkpoints and unfinished adapter: ``job-<id>/``."""
        return (self.data_dir / "finetune").resolve()

    @property
    def model_dir(self) -> Path:
        return (self.data_dir / "models").resolve()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file is named by the subclass load_settings() makes; plain Settings() has none.
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))


def load_settings(config_file: str | Path | None = None, **overrides: object) -> Settings:
    """Settings from ``config_file`` (else ``$HEALTHAGENT_CONFIG``, else none), env and overrides."""
    path = config_file or os.environ.get(CONFIG_ENV)
    if path is None:
        return Settings(**overrides)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"settings file not found: {path}")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "yaml_file": path})

    loaded = _FromFile(**overrides)
    # Hand back the plain class so the object pickles (Ray ships settings to replicas).
    return Settings.model_validate(dict(loaded))
