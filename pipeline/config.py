"""The YAML batch job of ``imagepush run``, validated before anything is written.

Example (relative paths are relative to the current directory)::

    audit: out/audit.parquet
    runner: {direct_num_workers: 2, direct_running_mode: multi_threading}
    defaults: {format: preserve, platforms: []}
    jobs:
      - copy: oci:./sample:demo/app:1.0
        to:
          - oci:./out:demo/app:1.0
          - {ref: "dir:./out-dir", format: v2s2}
      - sync: oci:./sample
        include: ["^demo/"]
        to: [{ref: "oci:./mirror", format: oci}]
"""

from __future__ import annotations

import re
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from imagepush.pipeline.exits import UsageError
from imagepush.pipeline.graph import RunSpec
from imagepush.pipeline.options import DEFAULT_RUNNER, BeamOptionError, BeamOptions
from imagepush.transforms.formats.descriptor import FormatError, Platform
from imagepush.transforms.naming import copy_job
from imagepush.transforms.plan import Output
from imagepush.transforms.stores.base import StoreError
from imagepush.transforms.stores.options import StoreOptions
from imagepush.transforms.stores.reference import SINGLE_IMAGE, parse_reference

Format = Literal["preserve", "oci", "v2s2"]
Compression = Literal["preserve", "gzip", "zstd", "none"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DestinationConfig(_Strict):
    ref: str
    format: Format | None = None
    compression: Compression | None = None


class Defaults(_Strict):
    format: Format = "preserve"
    compression: Compression = "preserve"
    platforms: list[str] = Field(default_factory=list)


class RegistryConfig(_Strict):
    insecure: list[str] = Field(default_factory=list)
    authfile: str | None = None
    ca_bundle: str | None = None
    concurrency: int = Field(default=8, ge=1)
    retries: int = Field(default=4, ge=0)


class JobConfig(_Strict):
    copy_: str | None = Field(default=None, alias="copy")
    sync: str | None = None
    to: list[str | DestinationConfig]
    format: Format | None = None
    compression: Compression | None = None
    platforms: list[str] | None = None
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_source(self) -> "JobConfig":
        if (self.copy_ is None) == (self.sync is None):
            raise ValueError("each job needs exactly one of 'copy' or 'sync'")
        if not self.to:
            raise ValueError("each job needs at least one destination in 'to'")
        if self.copy_ is not None and (self.include or self.exclude):
            raise ValueError("'include'/'exclude' filter sync jobs only")
        return self

    @field_validator("include", "exclude")
    @classmethod
    def _regex(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"bad regular expression {p!r}: {exc}") from None
        return patterns


class RunConfig(_Strict):
    audit: str | None = None
    parallel: int = Field(default=8, ge=1)
    #: Check destinations on the launcher first (see ``--no-preflight``).
    preflight: bool = True
    runner: dict[str, Any] = Field(default_factory=dict)
    defaults: Defaults = Field(default_factory=Defaults)
    registries: RegistryConfig = Field(default_factory=RegistryConfig)
    jobs: list[JobConfig]


def parse_run_config(text: str, run_id: str, default_audit: str, extra_beam_args: list[str]) -> RunSpec:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"config is not valid YAML: {str(exc).splitlines()[0]}") from None
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise UsageError(f"config: {where}: {first['msg']}") from None
    beam_args: list[str] = []
    if cfg.runner:  # Beam is imported only for a run that has Beam options
        try:
            beam_args = BeamOptions(str(cfg.runner.get("runner") or DEFAULT_RUNNER)).from_mapping(cfg.runner)
        except BeamOptionError as exc:
            raise UsageError(f"config: runner: {exc}") from None
    spec = RunSpec(
        run_id=run_id,
        audit_url=cfg.audit or default_audit,
        beam_args=beam_args + list(extra_beam_args),
        parallel=cfg.parallel,
        preflight=cfg.preflight,
        options=StoreOptions(
            insecure_registries=tuple(cfg.registries.insecure),
            authfile=cfg.registries.authfile,
            ca_bundle=cfg.registries.ca_bundle,
            registry_concurrency=cfg.registries.concurrency,
            registry_retries=cfg.registries.retries,
        ),
    )
    from imagepush.transforms.plan import SyncSpec

    try:
        for n, job in enumerate(cfg.jobs):
            platforms = tuple(job.platforms if job.platforms is not None else cfg.defaults.platforms)
            for p in platforms:
                Platform.parse(p)
            fmt = job.format or cfg.defaults.format
            compression = job.compression or cfg.defaults.compression
            dests: list[Output] = []
            for d in job.to:
                if isinstance(d, str):
                    d = DestinationConfig(ref=d)
                out = Output(str(parse_reference(d.ref)), d.format or fmt, d.compression or compression)
                if parse_reference(d.ref).transport == "registry-storage":
                    raise UsageError(f"config: jobs.{n}: {d.ref}: registry-storage: is a source only")
                if out.format == "v2s2" and out.compression == "zstd":
                    raise UsageError(f"config: jobs.{n}: {d.ref}: zstd compression needs OCI manifests, not v2s2")
                dests.append(out)
            if job.copy_ is not None:
                source = parse_reference(job.copy_)
                spec.jobs.append(copy_job(source, dests, platforms))
            else:
                for out in dests:
                    if parse_reference(out.ref).transport in SINGLE_IMAGE:
                        raise UsageError(f"config: jobs.{n}: {out.ref}: a dir: holds one image; sync elsewhere")
                spec.syncs.append(SyncSpec(
                    str(parse_reference(job.sync)), tuple(dests), platforms, tuple(job.include), tuple(job.exclude),
                ))
    except (StoreError, FormatError) as exc:
        raise UsageError(f"config: {exc}") from None
    return spec


def load_run_config(path: str, run_id: str, extra_beam_args: list[str], default_audit: str) -> RunSpec:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror}") from None
    return parse_run_config(text, run_id, default_audit, extra_beam_args)
