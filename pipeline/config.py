"""The one validated model of a run, filled from a YAML file or from the command line.

``imagepush run`` reads the model from its YAML file; ``copy`` and ``sync`` fill the same
model from their flags, and ``ls`` and ``inspect`` its registry and platform settings.
Every rule about a run lives here once, so a flag and the YAML key that mean the same
thing are refused with the same message: the flag names itself, the key its path in the
file. The whole run is checked before anything is written.

Example (relative paths are relative to the current directory)::

    audit: out/audit.parquet
    runner: {direct_num_workers: 2, direct_running_mode: multi_threading}
    registries: {hosts: {quay.io: {username: robot, password_env: QUAY_PASSWORD}}}
    defaults: {format: preserve, platforms: []}
    jobs:
      - copy: oci:./sample:demo/app:1.0
        to:
          - oci:./out:demo/app:1.0
          - {ref: "dir:./out-dir", format: v2s2}
      - sync: oci:./sample
        include: ["^demo/"]
        to: [{ref: "oci:./mirror", format: oci}]
      - sync: docker://quay.io/team             # tag selection and names: docs/cli.md
        semver: ">=1.2, <2"
        latest: 3
        rename: "mirror/{repository:1}"
        to: [docker://mirror.example.com/hub]
      - records: s3://bucket/images/*.parquet    # one image per row, read on the workers
        to: [docker://mirror.example.com/hub]    # for rows without a destination

A file of ``verify:`` jobs checks a finished migration instead (nothing is written)::

    jobs:
      - verify: docker://registry.example.com/team    # an image, or a store listed as sync lists it
        to: [docker://mirror.example.com/hub]
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError,
    model_validator,
)

from imagepush.pipeline.exits import UsageError
from imagepush.pipeline.graph import RunSpec
from imagepush.pipeline.options import DEFAULT_RUNNER, BeamOptions
from imagepush.transforms.formats.descriptor import Platform
from imagepush.transforms.engine.jobs import Output, RecordSource, SyncSpec
from imagepush.transforms.engine.selection import SelectionError, TagSelection, parse_range
from imagepush.transforms.engine.templates import NameTemplate, TemplateError
from imagepush.transforms.stores.options import HostOptions, Secret, StoreOptions
from imagepush.transforms.stores.refs import (
    REGISTRY_TRANSPORT, SINGLE_IMAGE, TAG_RE, ImageReference, ReferenceError, parse_reference,
)

Format = Literal["preserve", "oci", "v2s2"]
Compression = Literal["preserve", "gzip", "zstd", "none"]
FORMATS: tuple[str, ...] = get_args(Format)
COMPRESSIONS: tuple[str, ...] = get_args(Compression)

#: A place in the model, as keys and list positions: the path of a key in the YAML file.
Loc = tuple[str | int, ...]


class RunConfigError(ValueError):
    """A rule of the run model broken at ``loc``; or several, each with its place, in ``problems``.

    The message never repeats the value of a key the model does not know: a misspelt
    ``password`` must not end up in a terminal or a CI log.
    """

    def __init__(self, loc: Loc, message: str, problems: Sequence[tuple[Loc, str]] = ()) -> None:
        super().__init__(message)
        self.loc = loc
        #: Every problem found, the first being ``(loc, message)``.
        self.problems: list[tuple[Loc, str]] = list(problems) or [(loc, message)]


def _parsed(text: str) -> ImageReference:
    try:
        return parse_reference(text)
    except ReferenceError as exc:  # a StoreError, which pydantic would not take for a validation error
        raise ValueError(str(exc)) from None


def _reference(text: str) -> str:
    _parsed(text)
    return text


def _platform(text: str) -> str:
    Platform.parse(text)
    return text


def _pattern(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"bad regular expression {text!r}: {exc}") from None
    return text


def _range(text: str) -> str:
    try:
        parse_range(text)
    except SelectionError as exc:
        raise ValueError(str(exc)) from None
    return text


def _template(text: str) -> str:
    try:
        NameTemplate(text)
    except TemplateError as exc:
        raise ValueError(str(exc)) from None
    return text


#: Multipliers of the units a ``--max-bandwidth`` may be written in (``/s`` optional).
_RATE_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
               "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}


def parse_rate(text: str | float) -> float:
    """Bytes per second from ``50MB/s``, ``1.5GiB/s``, ``800k`` or a plain number of bytes."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)(?:/s)?\s*", str(text))
        if not match or match.group(2).lower() not in _RATE_UNITS:
            raise ValueError(f"{text!r} is not a rate: write it as 50MB/s, 1.5GiB/s or 800KB/s")
        value, unit = float(match.group(1)), match.group(2).lower()
    rate = value * _RATE_UNITS[unit]
    if rate <= 0:
        raise ValueError(f"{text!r}: a rate must be above 0")
    return rate


def _tag(text: str) -> str:
    if not TAG_RE.match(text):
        raise ValueError(f"{text!r} is not a tag")
    return text


def _beam_flags(options: object) -> object:
    """``runner`` is a mapping of Beam options; the model keeps them as the flags Beam parses."""
    if not isinstance(options, dict):
        raise ValueError("give Beam options as a mapping, {name: value}")
    if not options:
        return []
    return BeamOptions(str(options.get("runner") or DEFAULT_RUNNER)).from_mapping(options)


Reference = Annotated[str, AfterValidator(_reference)]
PlatformText = Annotated[str, AfterValidator(_platform)]
Pattern = Annotated[str, AfterValidator(_pattern)]
VersionRange = Annotated[str, AfterValidator(_range)]
Template = Annotated[str, AfterValidator(_template)]
Tag = Annotated[str, AfterValidator(_tag)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DestinationConfig(_Strict):
    """Where a job writes, with its own format and compression; a bare reference stands for ``{ref: …}``."""

    ref: str
    format: Format | None = None
    compression: Compression | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_reference(cls, data: Any) -> Any:
        return {"ref": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _writable(self) -> DestinationConfig:
        # Checked on the whole destination, not on ``ref``, so that a problem is reported
        # at the place the user wrote (``jobs.0.to.1``), whichever form they wrote it in.
        if _parsed(self.ref).transport == "registry-storage":
            raise ValueError(f"{self.ref!r}: registry-storage: is a source only")
        return self


class Defaults(_Strict):
    format: Format = "preserve"
    compression: Compression = "preserve"
    platforms: list[PlatformText] = Field(default_factory=list)


class HostConfig(_Strict):
    """One registry host's own settings, in place of the run's (``registries.hosts``).

    A password is given inline or, better, named by the environment variable that holds
    it on the launcher (``password_env``); it travels to the workers with the run and
    is never shown, logged or written to the audit.
    """

    username: str | None = None
    password: SecretStr | None = None
    password_env: str | None = None
    authfile: str | None = None
    tls_verify: bool | None = None
    ca_bundle: str | None = None
    concurrency: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_password(self) -> HostConfig:
        if self.password is not None and self.password_env is not None:
            raise ValueError("give 'password' or 'password_env', not both")
        if self.password_env is not None and self.password_env not in os.environ:
            raise ValueError(f"password_env: the environment variable {self.password_env} is not set")
        if (self.password is not None or self.password_env is not None) and self.username is None:
            raise ValueError("a password needs a 'username'")
        if self.tls_verify is False and self.ca_bundle is not None:
            raise ValueError("'ca_bundle' means nothing with 'tls_verify: false'")
        return self

    def host_options(self, host: str) -> HostOptions:
        if self.password_env is not None:
            password: Secret | None = Secret(os.environ[self.password_env])
        else:
            password = Secret(self.password.get_secret_value()) if self.password is not None else None
        return HostOptions(host=host, username=self.username, password=password, authfile=self.authfile,
                           ca_bundle=self.ca_bundle, tls_verify=self.tls_verify, concurrency=self.concurrency)


def _host_key(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]+)?|\[[0-9A-Fa-f:.]+\](:[0-9]+)?", text):
        raise ValueError(f"{text!r} is not a registry host[:port] (no scheme, no path)")
    return text


class RegistryConfig(_Strict):
    insecure: list[str] = Field(default_factory=list)
    authfile: str | None = None
    ca_bundle: str | None = None
    concurrency: int = Field(default=8, ge=1)
    #: Whether ``concurrency`` is used as it is instead of as the ceiling of an adaptive limit.
    concurrency_fixed: bool = False
    #: Requests per second per registry host from each worker; None: no limit.
    rps: float | None = Field(default=None, gt=0)
    retries: int = Field(default=4, ge=0)
    #: Seconds a registry that answered earlier in the run is waited for once it stops answering.
    outage_grace: float = Field(default=30.0, ge=0)
    #: Settings of single hosts, keyed by ``host[:port]``; they win over the ones above.
    hosts: dict[Annotated[str, AfterValidator(_host_key)], HostConfig] = Field(default_factory=dict)

    def store_options(self) -> StoreOptions:
        return StoreOptions(
            insecure_registries=tuple(self.insecure),
            authfile=self.authfile,
            ca_bundle=self.ca_bundle,
            registry_concurrency=self.concurrency,
            adaptive_concurrency=not self.concurrency_fixed,
            registry_rps=self.rps,
            registry_retries=self.retries,
            outage_grace=self.outage_grace,
            hosts=tuple(config.host_options(host) for host, config in self.hosts.items()),
        )


class JobConfig(_Strict):
    """One ``copy`` (an image), ``sync`` (every image of a store) or ``records`` (the images a file names).

    Or one ``verify``: an image (a reference naming one) or a store (listed and name-mapped
    as ``sync`` does), checked at ``to`` without writing anything.
    """

    copy_: Reference | None = Field(default=None, alias="copy")
    sync: Reference | None = None
    verify: Reference | None = None
    #: A records file, folder or glob on any fsspec URL: read on the workers, a job per row.
    records: Annotated[str, Field(min_length=1)] | None = None
    #: ``records`` only: run just the rows whose status is failed (an audit, for ``retry``).
    only_failed: bool = False
    #: ``records`` only: copy a row's ``source_digest`` rather than what its tag points at now
    #: (default: yes, except with ``only_failed``, which resolves tags again).
    pin_digest: bool | None = None
    #: Required for copy and sync; for records, where rows without a destination go.
    to: list[DestinationConfig] | None = Field(default=None, min_length=1)
    format: Format | None = None
    compression: Compression | None = None
    platforms: list[PlatformText] | None = None
    #: Regular expressions over ``repository:tag`` (engine/selection.py has every filter's rule).
    include: list[Pattern] = Field(default_factory=list)
    exclude: list[Pattern] = Field(default_factory=list)
    #: Only these tags.
    tags: list[Tag] = Field(default_factory=list)
    #: Only tags that are versions in this range (``>=1.2, <2``, ``~1.2``, ``^1.2``).
    semver: VersionRange | None = None
    #: Per repository, only the N highest versions among the tags the other filters keep.
    latest: int | None = Field(default=None, ge=1)
    #: The name each image gets below the destinations (engine/templates.py).
    rename: Template | None = None

    @model_validator(mode="after")
    def _one_source(self) -> JobConfig:
        if [self.copy_, self.sync, self.records, self.verify].count(None) != 3:
            raise ValueError("each job needs exactly one of 'copy', 'sync', 'records' or 'verify'")
        if self.sync is None and self.verify is None and self.selects:
            keys = self.selects
            raise ValueError(f"{'/'.join(repr(k) for k in keys)} filter{'s' if len(keys) == 1 else ''} sync jobs only")
        if self.verify is not None and names_one_image(parse_reference(self.verify)) and (
                self.selects or self.rename is not None):
            raise ValueError(f"{self.verify!r} names one image: filters and 'rename' apply to a listed store")
        if self.rename is not None:
            if self.sync is None and self.verify is None:
                raise ValueError("'rename' names the images of sync jobs only")
            source = parse_reference(self.source)
            if "registry" in NameTemplate(self.rename).placeholders and source.transport != REGISTRY_TRANSPORT:
                raise ValueError(f"'rename' uses {{registry}}, but {self.source!r} is no registry")
        if self.records is None and (self.only_failed or self.pin_digest is not None):
            raise ValueError("'only_failed'/'pin_digest' apply to records jobs only")
        if self.records is None and self.to is None:
            raise ValueError("a copy or sync job needs 'to'")
        if self.sync is not None:
            for dest in self.to or ():
                transport = parse_reference(dest.ref).transport
                if transport in SINGLE_IMAGE:
                    raise ValueError(
                        f"{dest.ref!r}: a {transport}: holds one image; sync into oci:, docker-archive: or docker://"
                    )
        return self

    @property
    def selects(self) -> list[str]:
        """The selection keys this job sets."""
        return [key for key in ("include", "exclude", "tags", "semver", "latest") if getattr(self, key)]

    def selection(self) -> TagSelection:
        return TagSelection(tuple(self.include), tuple(self.exclude), tuple(self.tags), self.semver, self.latest)

    @property
    def source(self) -> str:
        """The one of ``copy``, ``sync``, ``records`` and ``verify`` that is set."""
        return next(s for s in (self.copy_, self.sync, self.records, self.verify) if s is not None)


class RunConfig(_Strict):
    """A whole run: what the file of ``imagepush run`` holds, and what the flags of the other commands fill in."""

    audit: str | None = None
    parallel: int = Field(default=8, ge=1)
    #: Check destinations on the launcher first (see ``--no-preflight``).
    preflight: bool = True
    #: Never replace a name that points at another image (``--no-clobber``): such targets are skipped.
    no_clobber: bool = False
    #: Bytes per second each worker sends to each destination (``--max-bandwidth``); None: no cap.
    max_bandwidth: Annotated[float | None, BeforeValidator(lambda v: v if v is None else parse_rate(v))] = None
    #: Beam options; written as the ``runner`` mapping, kept as the flags Beam parses.
    beam_args: Annotated[list[str], BeforeValidator(_beam_flags)] = Field(default_factory=list, alias="runner")
    defaults: Defaults = Field(default_factory=Defaults)
    registries: RegistryConfig = Field(default_factory=RegistryConfig)
    jobs: list[JobConfig]

    @model_validator(mode="after")
    def _verifies_or_copies(self) -> RunConfig:
        """A run either checks a migration or does one: a check that ran before its copies would mean nothing."""
        verifies = [job.verify is not None for job in self.jobs]
        if any(verifies) and not all(verifies):
            raise ValueError("a file of 'verify' jobs cannot also copy: put them in a file of their own")
        return self

    @classmethod
    def parse(cls, data: object) -> RunConfig:
        """The model of ``data``; every problem found at once is one :class:`RunConfigError`."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems: list[tuple[Loc, str]] = []
            for error in exc.errors(include_url=False, include_input=False):
                # A bad mapping key is reported at the key itself, not at pydantic's "[key]" below it.
                loc = tuple(part for part in error["loc"] if part != "[key]")
                if error["type"] == "extra_forbidden":
                    message = "unknown key" + _did_you_mean(loc)
                elif error["type"] == "value_error":
                    message = str(error["ctx"]["error"])  # our own words, without pydantic's "Value error, "
                else:
                    message = error["msg"]
                if (loc, message) not in problems:
                    problems.append((loc, message))
            raise RunConfigError(*problems[0], problems=problems) from None

    def to_spec(self, run_id: str, default_audit: str, extra_beam_args: Sequence[str] = ()) -> RunSpec:
        """The run this model describes; Beam options of the command line come after the file's."""
        # Imported here: naming brings the stores and their clients, which the command
        # line's parser (built from this model's vocabularies and defaults) does not need.
        from imagepush.transforms.engine.naming import copy_job

        spec = RunSpec(
            run_id=run_id,
            audit_url=self.audit or default_audit,
            beam_args=self.beam_args + list(extra_beam_args),
            options=replace(self.registries.store_options(), max_bandwidth=self.max_bandwidth),
            parallel=self.parallel,
            preflight=self.preflight,
        )
        for n, job in enumerate(self.jobs):
            platforms = tuple(self.defaults.platforms if job.platforms is None else job.platforms)
            outputs = [self._output(n, i) for i in range(len(job.to or ()))]
            if job.records is not None:
                spec.records.append(self._records(n, outputs, platforms))
                continue
            source = parse_reference(job.source)
            spec.verify = spec.verify or job.verify is not None
            if job.copy_ is not None or (job.verify is not None and names_one_image(source)):
                spec.jobs.append(copy_job(source, outputs, platforms))
            else:
                rename = NameTemplate(job.rename) if job.rename is not None else None
                spec.syncs.append(SyncSpec(str(source), tuple(outputs), platforms, job.selection(), rename))
        return spec

    def _records(self, n: int, outputs: list[Output], platforms: tuple[str, ...]) -> RecordSource:
        """A records job: its URL, and the settings of rows that leave them empty.

        Rows are checked on the workers, as they are read; a row that names zstd with
        v2s2 fails alone there. Only the job's own settings are checked here.
        """
        job = self.jobs[n]
        fmt = job.format or self.defaults.format
        compression = job.compression or self.defaults.compression
        if compression == "zstd" and fmt == "v2s2":
            where = ("jobs", n, "compression") if job.compression else ("jobs", n, "format")
            raise RunConfigError(where, "zstd needs OCI manifests; it cannot be combined with format v2s2")
        pin = job.pin_digest if job.pin_digest is not None else not job.only_failed
        return RecordSource(str(job.records), tuple(outputs), fmt, compression, platforms, job.only_failed, pin)

    def _setting(self, name: str, n: int, i: int) -> tuple[str, Loc]:
        """A destination's ``format`` or ``compression``, and where it was set (to name it in an error).

        The destination's own setting wins, then its job's, then the defaults.
        """
        job = self.jobs[n]
        to = job.to or []
        levels = ((getattr(to[i], name), ("jobs", n, "to", i, name)), (getattr(job, name), ("jobs", n, name)))
        for value, loc in levels:
            if value is not None:
                return value, loc
        return getattr(self.defaults, name), ("defaults", name)

    def _output(self, n: int, i: int) -> Output:
        """How job ``n`` writes destination ``i``.

        Format and compression may each come from another level, so whether they go
        together is decided here, where they meet; the problem is reported where the
        more specific of the two was set (the compression when both were set at once).
        """
        fmt, fmt_at = self._setting("format", n, i)
        compression, compression_at = self._setting("compression", n, i)
        if compression == "zstd" and fmt == "v2s2":
            where = max(compression_at, fmt_at, key=len)
            raise RunConfigError(where, "zstd needs OCI manifests; it cannot be combined with format v2s2")
        return Output(str(parse_reference((self.jobs[n].to or [])[i].ref)), fmt, compression, self.no_clobber)


def names_one_image(ref: ImageReference) -> bool:
    """Whether ``verify`` checks one image (as ``copy`` copies it) or every image the store lists (as ``sync``).

    A reference that names an image (a tag, digest or ref name) or a store that holds
    one image selects one; a bare registry repository or prefix, a layout or an archive
    is listed.
    """
    return ref.ref is not None or ref.transport in SINGLE_IMAGE


def _keys_at(loc: Loc) -> list[str]:
    """The keys the model knows in the mapping at ``loc`` (empty when ``loc`` is no model's place)."""
    model: type[BaseModel] | None = RunConfig
    parts = list(loc)
    while parts and model is not None:
        part = parts.pop(0)
        field = next((f for name, f in model.model_fields.items() if (f.alias or name) == part), None)
        if field is None:
            return []
        annotation: Any = field.annotation
        model = None
        while True:  # through Optional, list and dict to what the next part names
            origin, args = get_origin(annotation), get_args(annotation)
            if origin is Annotated:
                annotation = args[0]
            elif origin in (list, dict) and parts:
                parts.pop(0)
                annotation = args[-1]
            elif args and type(None) in args:
                annotation = next(a for a in args if a is not type(None))
            else:
                break
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    if model is None or parts:
        return []
    return [field.alias or name for name, field in model.model_fields.items()]


def _did_you_mean(loc: Loc) -> str:
    """`` (did you mean 'to'?)`` for a misspelt key, when one known there is close enough."""
    key = loc[-1] if loc else None
    if not isinstance(key, str):
        return ""
    close = difflib.get_close_matches(key, _keys_at(loc[:-1]), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _dotted(loc: Loc) -> str:
    return ".".join(str(part) for part in loc)


@contextmanager
def _reported(
    where: Callable[[Loc], str], prefix: str = "", several: str = "", order: Callable[[Loc], Any] | None = None
) -> Iterator[None]:
    """Broken rules as one usage error: one line for one problem, else ``several`` and a line each.

    ``where`` names the place of a problem; ``prefix`` starts a lone problem's line;
    ``order`` sorts the problems (a file's by line).
    """
    try:
        yield
    except RunConfigError as exc:
        problems = sorted(exc.problems, key=lambda p: order(p[0])) if order is not None else exc.problems
        raise _usage([f"{where(loc)}{message}" for loc, message in problems], prefix, several) from None


def _usage(lines: list[str], prefix: str, several: str) -> UsageError:
    """One problem as ``prefix`` and its line; several as ``several``, their count and a line each."""
    if len(lines) == 1:
        return UsageError(prefix + lines[0])
    return UsageError(f"{several}{len(lines)} problems:\n" + "\n".join("  " + line for line in lines))


Marks = dict[Loc, tuple[yaml.Mark, yaml.Mark]]


def _marks(node: yaml.Node | None, loc: Loc = (), marks: Marks | None = None,
           repeated: list[tuple[Loc, yaml.Mark, yaml.Mark]] | None = None) -> Marks:
    """Where each key (and its value) of a YAML document starts, by its path in the model.

    A key written twice in one mapping goes to ``repeated`` with both places: YAML keeps
    the last silently, and a second ``jobs:`` would drop the first list of jobs.
    """
    marks = {} if marks is None else marks
    if node is None:
        return marks
    if not loc:
        marks[()] = (node.start_mark, node.start_mark)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                here = loc + (key.value,)
                if here in marks and repeated is not None:
                    repeated.append((here, marks[here][0], key.start_mark))
                marks[here] = (key.start_mark, value.start_mark)
                _marks(value, here, marks, repeated)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            marks[loc + (i,)] = (item.start_mark, item.start_mark)
            _marks(item, loc + (i,), marks, repeated)
    return marks


def _position(mark: yaml.Mark) -> str:
    return f"{mark.line + 1}:{mark.column + 1}"


def _mark_of(marks: Marks, loc: Loc) -> yaml.Mark | None:
    """Where a problem at ``loc`` is shown: the key when the file has it, else where its nearest mapping starts.

    A missing key, or a place only the model has, has no mark of its own.
    """
    known = next((loc[:end] for end in range(len(loc), -1, -1) if loc[:end] in marks), None)
    if known is None:
        return None
    key_mark, value_mark = marks[known]
    return key_mark if known == loc else value_mark


def _at_in_file(name: str, marks: Marks) -> Callable[[Loc], str]:
    """``FILE:LINE:COLUMN: key.path: `` for a problem at ``loc``."""

    def where(loc: Loc) -> str:
        mark = _mark_of(marks, loc)
        position = f"{name}:{_position(mark)}: " if mark is not None else f"{name}: "
        return position + (f"{_dotted(loc)}: " if loc else "")

    return where


def _in_file_order(marks: Marks) -> Callable[[Loc], tuple[int, int]]:
    def order(loc: Loc) -> tuple[int, int]:
        mark = _mark_of(marks, loc)
        return (mark.line, mark.column) if mark is not None else (0, 0)

    return order


def _load_yaml(text: str, name: str) -> tuple[Any, Marks]:
    """The document and where each of its keys is; a syntax error names its line and column."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{name}:{_position(mark)}: " if mark is not None else f"{name}: "
        context = f" ({exc.context} at {_position(exc.context_mark)})" if exc.context and exc.context_mark else ""
        # PyYAML's words for a line indented unlike its siblings; say what the user has to check.
        hint = "; check the indentation" if (exc.problem or "").startswith("expected <block end>") else ""
        raise UsageError(f"config: {where}not valid YAML: {exc.problem or exc.context}{context}{hint}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"config: {name}: not valid YAML: {str(exc).splitlines()[0]}") from None
    finally:
        loader.dispose()
    repeated: list[tuple[Loc, yaml.Mark, yaml.Mark]] = []
    marks = _marks(node, repeated=repeated)
    lines = [f"{name}:{_position(again)}: {_dotted(loc)}: duplicate key (first at {_position(first)})"
             for loc, first, again in repeated]
    if lines:
        raise _usage(lines, "config: ", f"config: {name} has ")
    return data, marks


def spec_from_yaml(
    text: str, run_id: str, default_audit: str, extra_beam_args: Sequence[str] = (), name: str = "<config>"
) -> RunSpec:
    """The run a YAML text describes; ``name`` (its file) starts the place of every problem."""
    raw, marks = _load_yaml(text, name)
    with _reported(_at_in_file(name, marks), "config: ", f"config: {name} has ", _in_file_order(marks)):
        return RunConfig.parse(raw).to_spec(run_id, default_audit, extra_beam_args)


def spec_from_file(path: str, run_id: str, default_audit: str, extra_beam_args: Sequence[str] = ()) -> RunSpec:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror}") from None
    return spec_from_yaml(text, run_id, default_audit, extra_beam_args, name=path)


#: Where each flag of the command line goes in the model, and its argparse ``dest``.
#: SRC and DST become the one job of ``copy`` and ``sync``.
FLAGS: dict[Loc, tuple[str, str]] = {
    ("audit",): ("--audit", "audit"),
    ("parallel",): ("--parallel", "parallel"),
    ("preflight",): ("--no-preflight", "preflight"),
    ("no_clobber",): ("--no-clobber", "no_clobber"),
    ("max_bandwidth",): ("--max-bandwidth", "max_bandwidth"),
    ("defaults", "format"): ("--format", "format"),
    ("defaults", "compression"): ("--compression", "compression"),
    ("defaults", "platforms"): ("--platform", "platform"),
    ("registries", "insecure"): ("--insecure-registry", "insecure_registry"),
    ("registries", "authfile"): ("--authfile", "authfile"),
    ("registries", "ca_bundle"): ("--ca-bundle", "ca_bundle"),
    ("registries", "concurrency"): ("--registry-concurrency", "registry_concurrency"),
    ("registries", "concurrency_fixed"): ("--registry-concurrency-fixed", "registry_concurrency_fixed"),
    ("registries", "rps"): ("--registry-rps", "registry_rps"),
    ("registries", "retries"): ("--retry-times", "retry_times"),
    ("registries", "outage_grace"): ("--outage-grace", "outage_grace"),
}


#: Flags of the one job of ``sync`` (and ``verify`` of a store): keys of ``jobs.0``.
JOB_FLAGS: dict[str, tuple[str, str]] = {
    "include": ("--include", "include"),
    "exclude": ("--exclude", "exclude"),
}


def _by_flag(loc: Loc) -> str:
    """The flag a problem at ``loc`` came from; a problem with SRC or DST names the reference itself."""
    for end in range(len(loc), 0, -1):
        if loc[:end] in FLAGS:
            return FLAGS[loc[:end]][0] + ": "
    if len(loc) >= 3 and loc[:2] == ("jobs", 0) and loc[2] in JOB_FLAGS:
        return JOB_FLAGS[str(loc[2])][0] + ": "
    return ""


def _flag_data(args: argparse.Namespace) -> dict[str, Any]:
    """The model's input from a command line: the flags its command has, and for copy and sync one job."""
    data: dict[str, Any] = {"jobs": []}
    for loc, (_, dest) in FLAGS.items():
        if hasattr(args, dest):
            *parents, key = loc
            node = data
            for part in parents:
                node = node.setdefault(part, {})
            node[key] = getattr(args, dest)
    if getattr(args, "records", None) is not None:
        data["jobs"].append(_records_job(args))
    elif args.command in ("verify", "plan"):  # a plan selects its images as verify does
        if args.source is None or not args.destinations:
            raise RunConfigError((), f"{args.command} needs SRC and at least one DST, or --records URL")
        data["jobs"].append({"verify": args.source, "to": args.destinations})
    elif args.command in ("copy", "sync"):
        if args.source is None or not args.destinations:
            raise RunConfigError((), f"{args.command} needs SRC and at least one DST" +
                                 (", or --records URL" if args.command == "copy" else ""))
        data["jobs"].append({args.command: args.source, "to": args.destinations})
    for key, (_, dest) in JOB_FLAGS.items():
        if getattr(args, dest, None) and data["jobs"]:
            data["jobs"][0][key] = getattr(args, dest)
    return data


def _records_job(args: argparse.Namespace) -> dict[str, Any]:
    """``copy --records URL [DST_PREFIX …]`` and ``retry AUDIT_URL``: one records job.

    For ``copy`` every positional is a destination prefix (there is no SRC); ``retry``
    runs an audit's failed rows, at their own destinations.
    """
    job: dict[str, Any] = {"records": args.records}
    prefixes = [text for text in [getattr(args, "source", None), *getattr(args, "destinations", [])] if text]
    if prefixes:
        job["to"] = prefixes
    if args.command == "retry":
        job["only_failed"] = True
        job["pin_digest"] = args.pin_digest
    return job


def from_flags(args: argparse.Namespace) -> RunConfig:
    """The settings of any command line (``ls`` and ``inspect`` use its registries and platforms)."""
    with _reported(_by_flag, several="the command line has "):
        return RunConfig.parse(_flag_data(args))


def spec_from_flags(
    args: argparse.Namespace, run_id: str, default_audit: str, beam_args: Sequence[str] = ()
) -> RunSpec:
    """The run of ``copy`` or ``sync``; ``beam_args`` were checked when they were split from ours."""
    with _reported(_by_flag, several="the command line has "):
        return RunConfig.parse(_flag_data(args)).to_spec(run_id, default_audit, beam_args)
