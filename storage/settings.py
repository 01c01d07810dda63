"""One settings object, from PACSBROKER_* environment variables and an optional TOML file."""

from __future__ import annotations

import os
import re
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class Peer(BaseModel):
    """A DICOM application entity we know; flags say what it may do."""

    ae: str
    host: str = "127.0.0.1"
    port: int = 104
    store: bool = True
    query: bool = True
    retrieve: bool = True

    @field_validator("ae")
    @classmethod
    def _ae_title(cls, v: str) -> str:
        v = v.strip()
        if not 0 < len(v) <= 16:
            raise ValueError("an AE title has 1 to 16 characters")
        return v


class HotFolder(BaseModel):
    """A folder a device drops files into; files carry their patient in a sidecar JSON
    (`<file>.json`) or in their name (`pattern`, a regex with a `patient` group)."""

    path: Path
    manufacturer: str = ""
    model: str = ""
    station: str = ""
    pattern: str = ""
    system: str = Field(default="", description="Identifier system of the patient IDs")
    settle: float = Field(default=2.0, description="Seconds a file must stay unchanged")
    sidecar_wait: float = Field(
        default=300.0, description="Seconds a file waits for its sidecar before it is refused"
    )


class PixelMask(BaseModel):
    """Where one device burns text into its images: rectangles blacked out before a research
    export, which lets such objects go instead of being held back."""

    manufacturer: str
    model: str = Field(default="", description="ManufacturerModelName; empty = every model")
    rows: int | None = Field(default=None, description="Only images of this many rows")
    columns: int | None = Field(default=None, description="Only images of this many columns")
    rectangles: list[tuple[int, int, int, int]] = Field(
        description="[x, y, width, height] in pixels from the top left corner"
    )


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the file named by PACSBROKER_CONFIG, if any; environment variables win."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("PACSBROKER_CONFIG")
        if not path:
            return {}
        with open(path, "rb") as f:
            data = tomllib.load(f)
        return {k.lower(): v for k, v in data.items()}


class Settings(BaseSettings):
    """Every field is also the environment variable PACSBROKER_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="PACSBROKER_", extra="ignore")

    data_dir: Path = Field(default=Path("var"), description="Spool, local stores, SQLite index")
    ae_title: str = "PACSBROKER"
    bind_host: str = Field(default="0.0.0.0", description="Address the DICOM and HTTP ports bind")
    dicom_port: int = 11112
    http_port: int = 8080
    database_url: str = Field(default="", description="SQLAlchemy URL; empty = SQLite in data_dir")
    s3_endpoint: str = Field(default="", description="host:port of MinIO/S3; empty = local store")
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_bucket: str = "pacs-archive"
    s3_secure: bool = False
    near_dir: Path | None = Field(default=None, description="Local near tier (cache by readers)")
    near_s3_endpoint: str = Field(default="", description="host:port of a near MinIO/S3 tier")
    near_s3_bucket: str = "pacs-near"
    near_s3_access_key: str = Field(default="", description="empty = the far tier's key")
    near_s3_secret_key: str = ""
    near_budget_mb: float = Field(default=10240, description="What the near tier may hold, MiB")
    near_on_ingest: bool = Field(default=False, description="Write new objects to near as well")
    prefetch_pin_hours: float = Field(
        default=48.0, description="Hours prefetched studies are kept from eviction"
    )
    prefetch_pause: float = Field(
        default=0.0, description="Seconds a prefetch pauses between studies, to spare far"
    )
    peers: list[Peer] = Field(default_factory=list)
    loopback_open: bool | None = Field(
        default=None,
        description="Accept unknown AE titles from loopback; default: only while PEERS is empty",
    )
    receivers: int = Field(
        default=0, description="DICOM receiver processes; 0 = one per core but one"
    )
    ingest_batch: int = 64
    ingest_threads: int = 4
    max_pdu: int = 262144
    pn_case_insensitive: bool = False
    spool_segment_mb: int = 64
    network_timeout: float = 60.0
    log_level: str = "INFO"
    hl7_port: int = Field(default=2575, description="MLLP port for HL7 v2 ADT/orders; 0 = off")
    pas_fhir_url: str = Field(default="", description="PAS FHIR R4 base URL; empty = no PAS")
    pas_token: str = Field(default="", description="Bearer token for the PAS FHIR API")
    pas_timeout: float = Field(default=2.0, description="Seconds before a PAS lookup gives up")
    pas_retry_interval: float = Field(
        default=10.0, description="Seconds between reconciliation rounds for unverified patients"
    )
    commitment_wait: float = Field(
        default=60.0,
        description="Seconds a storage commitment waits for an instance still on its way",
    )
    uid_root: str = Field(
        default="",
        description="UID root for objects we create (≤ 40 characters, with or without the "
        "trailing dot); empty = UUID-derived 2.25 UIDs",
    )
    hotfolders: list[HotFolder] = Field(
        default_factory=list, description="Device drop folders to DICOM-ize (JSON list)"
    )
    hotfolder_interval: float = Field(default=1.0, description="Seconds between folder scans")
    stow_max_mb: int = Field(default=2048, description="Largest STOW-RS request body accepted")
    cors_origins: list[str] = Field(
        default_factory=list, description="Web origins (e.g. an OHIF viewer) allowed to call us"
    )
    audit_syslog: str = Field(
        default="",
        description="Also send audit events as DICOM PS3.15 messages to syslog:"
        " udp://host:514, tcp://host:514 or tls://host:6514; empty = the audit table only",
    )
    oidc_issuer: str = Field(
        default="",
        description="OpenID Connect provider (token `iss`) whose bearer tokens are accepted"
        " beside the local key's; empty = local tokens only",
    )
    oidc_jwks_url: str = Field(
        default="", description="Its JWKS; empty = jwks_uri of its openid-configuration"
    )
    oidc_audience: str = Field(default="pacsbroker", description="The `aud` its tokens must have")
    oidc_role_claim: str = Field(
        default="role", description="Claim with the role (a dotted path, e.g. realm_access.roles)"
    )
    oidc_user_claim: str = Field(
        default="sub",
        description="Claim audited as the user; `sub` is the one a provider keeps unique",
    )
    allow_synthetic_ids: bool = Field(
        default=True, description="Accept synthetic national IDs (month + 80); off in production"
    )
    job_workers: int = Field(default=2, description="Jobs one broker process runs at a time")
    job_lease: float = Field(
        default=30.0, description="Seconds before another process takes over a silent job"
    )
    retention_sweep_hours: float = Field(
        default=24.0, description="Hours between scheduled retention sweeps; 0 = off"
    )
    retention_pause: float = Field(
        default=0.0, description="Seconds a sweep pauses between studies, to spare the archive"
    )
    rejection_grace_days: float = Field(
        default=30.0, description="Days IOCM-rejected instances are kept; negative = forever"
    )
    fixity_hours: float = Field(
        default=24.0, description="Hours between scheduled fixity checks; 0 = off"
    )
    fixity_sample: float = Field(
        default=1000, description="Objects a fixity check re-hashes: a count, or a fraction ≤ 1"
    )

    research_database_url: str = Field(
        default="", description="Research/teaching index; empty = SQLite in DATA_DIR/research"
    )
    research_s3_endpoint: str = Field(
        default="", description="MinIO/S3 of the research bucket; empty = S3_ENDPOINT, if any"
    )
    research_s3_bucket: str = Field(default="pacs-research", description="Research bucket")
    research_s3_access_key: str = Field(default="", description="empty = S3_ACCESS_KEY")
    research_s3_secret_key: str = Field(default="", description="empty = S3_SECRET_KEY")
    research_pixel_masks: list[PixelMask] = Field(
        default_factory=list, description="Burned-in annotation of devices, masked on export"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        v = v.strip()
        if not 0 < len(v) <= 16:
            raise ValueError("AE_TITLE has 1 to 16 characters")
        return v

    @field_validator("uid_root")
    @classmethod
    def _uid_root(cls, v: str) -> str:
        """Ends in '.', as UID generators need; short enough that a UID under it keeps about
        24 digits of uniqueness within the 64 characters a UID may have."""
        v = v.strip()
        if not v:
            return v
        v = v if v.endswith(".") else v + "."
        # PS3.5 9.1: numbers without leading zeros, separated by dots
        if not re.fullmatch(r"[0-2](\.(0|[1-9][0-9]*))*\.", v):
            raise ValueError(
                f"UID_ROOT {v!r} is not a UID prefix: numbers without leading zeros, "
                "separated by dots (e.g. 1.2.826.0.1.3680043.10.1432)"
            )
        if len(v) > 40:
            raise ValueError(
                f"UID_ROOT {v!r} has {len(v)} characters; at most 40 leave room for unique "
                "UIDs within 64"
            )
        return v

    @cached_property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'index.db').resolve()}"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def open_to_loopback(self) -> bool:
        return self.loopback_open if self.loopback_open is not None else not self.peers

    def peer(self, ae: str) -> Peer | None:
        ae = ae.strip()
        return next((p for p in self.peers if p.ae == ae), None)

    def receiver_count(self) -> int:
        # the main process (ingest, HTTP, HL7) keeps a core of its own: on 2 cores a second
        # receiver added ~130 MB and no throughput, since ingest is what limits the rate
        return self.receivers or max(1, (os.cpu_count() or 1) - 1)
