"""Loading and validating a whole project: every journey, policies.yaml, segments.yaml and
the templates they reference. Every error of the run is collected, each with its location.

validate → compile → run: this module is the first stage and knows nothing of the database.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Collection, Iterator, Optional

from pydantic import ValidationError

from nurture.durations import format_duration
from nurture.rendering.templates import TemplateLibrary
from nurture.scoring.spec import check_handover, load_scoring
from nurture.spec.conversions import load_conversions
from nurture.spec.errors import SpecError, did_you_mean
from nurture.spec.model_errors import pydantic_errors
from nurture.spec.models import (CHANNELS, DOUBLE_OPT_IN_TEMPLATES, OBJECTIVE_METRICS, SMS_DOUBLE_OPT_IN_TEMPLATES,
                                 Condition, Journey, Objective, Policies, Step)
from nurture.spec.segments import Segment, SegmentsFile
from nurture.spec.yaml_loader import Locations, load_located

SPECIAL_FILES = {"policies", "segments", "scoring", "conversions"}


@dataclass
class ProjectSpec:
    root: Path
    policies: Policies
    journeys: dict[str, Journey] = field(default_factory=dict)
    segments: dict[str, Segment] = field(default_factory=dict)
    locations: dict[str, Locations] = field(default_factory=dict)
    errors: list[SpecError] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # other files: scoring.yaml, conversions.yaml
    # The errors each journey is answerable for (its file, its templates, its references);
    # a journey listed here is broken and does not tick, the others do.
    journey_errors: dict[str, list[SpecError]] = field(default_factory=dict)
    # What `nurture validate` points out without failing (a marketing template without a
    # visible unsubscribe link): printed, exit code 0, nothing stops ticking.
    warnings: list[SpecError] = field(default_factory=list)
    # project_fingerprint(root) taken as a full load began (empty for a load of one journey):
    # a process that already holds this spec can tell whether the files changed since.
    fingerprint: tuple = ()

    @property
    def ok(self) -> bool:
        return not self.errors

    def file_errors(self, special: str) -> list[SpecError]:
        """Errors of one of the shared files: policies, segments or scoring."""
        owned = {e for errs in self.journey_errors.values() for e in errs}
        return [e for e in self.errors if e not in owned and Path(e.path).stem == special]

    @property
    def fatal_errors(self) -> list[SpecError]:
        """Errors that stop everything: policies.yaml (every send reads it) and a project
        folder that is not one."""
        owned = {e for errs in self.journey_errors.values() for e in errs}
        return [e for e in self.errors if e not in owned
                and Path(e.path).stem not in ("segments", "scoring", "conversions")]

    def errors_of(self, journey: str) -> list[SpecError]:
        """Why `journey` cannot run (empty: it can): the fatal errors, segments.yaml's when the
        journey uses a segment, scoring.yaml's when it hands over, and its own."""
        errors = list(self.fatal_errors)
        spec = self.journeys.get(journey)
        if spec is not None and _mentions(spec.model_dump(by_alias=True), "segment"):
            errors += self.file_errors("segments")
        if spec is not None and _mentions(spec.model_dump(by_alias=True), "handover"):
            errors += self.file_errors("scoring")
        return errors + sorted(set(self.journey_errors.get(journey, [])))

    @property
    def conversions(self) -> list[Any]:
        """The conversions declared in conversions.yaml (nurture.spec.conversions.Conversion)."""
        spec = self.extra.get("conversions")
        return list(spec.conversions) if spec is not None else []

    @property
    def journey_names(self) -> list[str]:
        """Every journey file's name, valid or broken."""
        return sorted(set(self.journeys) | set(self.journey_errors))

    @property
    def journeys_dir(self) -> Path:
        return self.root / "journeys"

    @property
    def templates(self) -> TemplateLibrary:
        return TemplateLibrary(self.root / "templates", currency=self.policies.currency, locale=self.policies.locale,
                               timezone=self.policies.timezone)


# ---------------------------------------------------------------- walking the spec


def iter_steps(steps: list[Step], path: tuple) -> Iterator[tuple[Step, tuple]]:
    for i, step in enumerate(steps):
        here = path + (i,)
        yield step, here
        if step.branch:
            yield from iter_steps(step.branch.then, here + ("branch", "then"))
            yield from iter_steps(step.branch.else_, here + ("branch", "else"))
        if step.wait_for:
            yield from iter_steps(step.wait_for.then, here + ("wait_for", "then"))
            yield from iter_steps(step.wait_for.timeout, here + ("wait_for", "timeout"))
        if step.split:
            for a, arm in enumerate(step.split):
                yield from iter_steps(arm.steps, here + ("split", a, "steps"))


def iter_conditions(cond: Optional[Condition], path: tuple) -> Iterator[tuple[Condition, tuple]]:
    if cond is None:
        return
    yield cond, path
    for group in ("all", "any"):
        for i, child in enumerate(getattr(cond, group) or []):
            yield from iter_conditions(child, path + (group, i))
    if cond.not_ is not None:
        yield from iter_conditions(cond.not_, path + ("not",))


def journey_conditions(journey: Journey) -> Iterator[tuple[Condition, tuple]]:
    if journey.trigger.where:
        yield from iter_conditions(journey.trigger.where, ("trigger", "where"))
    if journey.trigger.when:
        yield from iter_conditions(journey.trigger.when, ("trigger", "when"))
    if journey.trigger.segment:
        yield from iter_conditions(Condition(segment=journey.trigger.segment), ("trigger",))
    for i, cond in enumerate(journey.exit_when):
        yield from iter_conditions(cond, ("exit_when", i))
    for step, path in iter_steps(journey.steps, ("steps",)):
        if step.branch:
            yield from iter_conditions(step.branch.when, path + ("branch", "when"))


# ---------------------------------------------------------------- loading


def _load_file(path: Path, display: str) -> tuple[Any, Locations, list[SpecError]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return None, Locations(display), [SpecError(display, 1, 1, f"not UTF-8 text: {exc.reason}")]
    return load_located(text, display)


def _display(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def load_policies(root: Path, errors: list[SpecError], locations: dict[str, Locations]) -> Policies:
    path = root / "journeys" / "policies.yaml"
    if not path.is_file():
        return Policies()
    data, locs, errs = _load_file(path, _display(root, path))
    locations["policies"] = locs
    errors.extend(errs)
    if errs:
        return Policies()
    try:
        return Policies.model_validate(data or {})
    except ValidationError as exc:
        errors.extend(pydantic_errors(exc, locs, Policies))
        return Policies()


def load_segments(root: Path, errors: list[SpecError], locations: dict[str, Locations]) -> dict[str, Segment]:
    path = root / "journeys" / "segments.yaml"
    if not path.is_file():
        return {}
    data, locs, errs = _load_file(path, _display(root, path))
    locations["segments"] = locs
    errors.extend(errs)
    if errs:
        return {}
    try:
        parsed = SegmentsFile.model_validate(data or {})
    except ValidationError as exc:
        errors.extend(pydantic_errors(exc, locs, SegmentsFile))
        return {}
    return {s.name: s for s in parsed.segments}


def _check_journey(name: str, journey: Journey, locs: Locations, project: ProjectSpec,
                   library: TemplateLibrary) -> list[SpecError]:
    errors: list[SpecError] = []
    if journey.name != name:
        errors.append(locs.error(("name",), f"name '{journey.name}' must equal the file name '{name}'"))
    seen: dict[str, tuple] = {}
    for step, path in iter_steps(journey.steps, ("steps",)):
        if step.id in seen:
            errors.append(locs.error(path + ("id",), f"step id '{step.id}' is used twice (ids must be unique)"))
        seen[step.id] = path
        if step.send:
            where = (locs.file, *locs.of(path + ("send", "template")))
            for channel in step.send.options:
                errors.extend(library.check(channel, step.send.template, where))
            for key in ("subject", "preheader"):
                source = getattr(step.send, key)
                if source:
                    errors.extend(library.check_string(source, (locs.file, *locs.of(path + ("send", key)))))
        if step.handover is not None:
            errors.extend(check_handover(step.handover, locs, path + ("handover",)))
        if step.split:
            names = [arm.name for arm in step.split]
            if len(set(names)) != len(names):
                errors.append(locs.error(path + ("split",), "split arm names must be unique"))
    errors.extend(template_variable_problems(journey, locs, library)[0])
    for cond, path in journey_conditions(journey):
        if cond.segment is not None and cond.segment not in project.segments:
            hint = did_you_mean(cond.segment, project.segments)
            errors.append(locs.error(path + ("segment",), f"unknown segment '{cond.segment}'", hint))
        if cond.property is not None and path[:2] not in (("trigger", "where"),) and not journey.trigger.event:
            errors.append(locs.error(path + ("property",), "'property' needs an event trigger"))
    for i, cap in enumerate(journey.frequency_cap):
        for policy_cap in project.policies.frequency_caps:
            if policy_cap.channel == cap.channel and policy_cap.per == cap.per and cap.max > policy_cap.max:
                errors.append(locs.error(("frequency_cap", i, "max"),
                                         f"frequency_cap may only tighten policies.yaml "
                                         f"({cap.channel}: at most {policy_cap.max} per {format_duration(policy_cap.per)})"))
    errors.extend(check_objectives(journey.objectives, locs, journey))
    return errors


# What a journey objective's metric needs to be measurable at all.
_NEEDS_GOAL = {"conversions", "conversion_rate", "revenue", "incremental_revenue", "cac", "roi", "incremental_roi"}
_NEEDS_HOLDOUT = {"incremental_revenue", "incremental_roi"}
_NEEDS_SEND = {"recipients", "clicks", "click_rate", "unsubscribe_rate"}


def check_objectives(objectives: list[Objective], locs: Locations, journey: Optional[Journey] = None
                     ) -> list[SpecError]:
    """SMART objectives: a metric known for the scope (a journey's, else the project's in
    policies.yaml) that the journey can measure, and a deadline after the start."""
    scope = "journey" if journey is not None else "project"
    known = OBJECTIVE_METRICS[scope]
    sends = journey is not None and any(step.send for step, _ in iter_steps(journey.steps, ("steps",)))
    errors: list[SpecError] = []
    for i, objective in enumerate(objectives):
        here, metric = ("objectives", i), objective.metric
        if metric not in known:
            where = "a journey" if journey is not None else "policies.yaml"
            errors.append(locs.error(here + ("metric",), f"unknown objective metric '{metric}' for {where} "
                                     f"(known: {', '.join(known)})", did_you_mean(metric, known)))
            continue
        if journey is not None and metric in _NEEDS_GOAL and journey.goal is None:
            errors.append(locs.error(here + ("metric",), f"'{metric}' is measured on the journey's conversions: "
                                     "add a goal, e.g. goal: {event: purchase, within: 7d}"))
        if journey is not None and metric in _NEEDS_HOLDOUT and not journey.holdout:
            errors.append(locs.error(here + ("metric",), f"'{metric}' is measured against a holdout: "
                                     "add e.g. holdout: 10% to the journey"))
        if journey is not None and metric in _NEEDS_SEND and not sends:
            errors.append(locs.error(here + ("metric",), f"'{metric}' counts messages, and this journey has "
                                     "no send step"))
        baseline = objective.baseline
        if objective.start is None and baseline is not None and objective.deadline <= baseline.to + timedelta(days=1):
            errors.append(locs.error(here + ("deadline",), f"the deadline {objective.deadline} is not after the "
                                     f"objective's start {baseline.to + timedelta(days=1)} (the day after its baseline)"))
        if objective.start is not None and baseline is not None and baseline.to >= objective.start:
            errors.append(locs.error(here + ("baseline", "to"), f"the baseline period must end before the "
                                     f"objective's start ({objective.start})"))
    return errors


def _raw_steps(steps: Any, path: tuple) -> Iterator[tuple[dict, tuple]]:
    if not isinstance(steps, list):
        return
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            continue
        here = path + (i,)
        yield step, here
        for kind, keys in (("branch", ("then", "else")), ("wait_for", ("then", "timeout"))):
            body = step.get(kind)
            if isinstance(body, dict):
                for key in keys:
                    yield from _raw_steps(body.get(key), here + (kind, key))
        if isinstance(step.get("split"), list):
            for a, arm in enumerate(step["split"]):
                if isinstance(arm, dict):
                    yield from _raw_steps(arm.get("steps"), here + ("split", a, "steps"))


def _raw_cross_checks(data: Any, locs: Locations, library: TemplateLibrary) -> list[SpecError]:
    """Template references, subjects and step-id uniqueness of a journey that failed schema
    validation."""
    errors: list[SpecError] = []
    seen: set[str] = set()
    for step, path in _raw_steps(data.get("steps") if isinstance(data, dict) else None, ("steps",)):
        sid = step.get("id")
        if isinstance(sid, str):
            if sid in seen:
                errors.append(locs.error(path + ("id",), f"step id '{sid}' is used twice (ids must be unique)"))
            seen.add(sid)
        send = step.get("send")
        if isinstance(send, dict) and isinstance(send.get("template"), str):
            options = send.get("channels") if isinstance(send.get("channels"), list) else [send.get("channel")]
            where = (locs.file, *locs.of(path + ("send", "template")))
            for channel in dict.fromkeys(c for c in options if c in CHANNELS):
                errors.extend(library.check(channel, send["template"], where))
        for key in ("subject", "preheader"):  # as _check_journey: every error of a file in one run
            if isinstance(send, dict) and isinstance(send.get(key), str) and send[key]:
                errors.extend(library.check_string(send[key], (locs.file, *locs.of(path + ("send", key)))))
    return errors


def _mentions(data: Any, key: str) -> bool:
    """Whether `key` is set anywhere in a journey's data (a `segment:` condition, a
    `handover:` step)."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get(key) is not None:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def template_variable_problems(journey: Journey, locs: Locations, library: TemplateLibrary,
                               attributes: Optional[Collection[str]] = None
                               ) -> tuple[list[SpecError], list[SpecError]]:
    """(errors, warnings) about the variables the journey's templates, subjects and preheaders
    read (a subject's located at it in the journey file), each template once:
    a key of a fixed namespace that does not exist (error); a property the trigger event does not
    document (docs/events.md); with `attributes` (the names contacts have in the database), a
    `contact.X` that is neither a field nor one of them — else a contact field name with a typo."""
    from nurture.event_schema import template_event_keys
    from nurture.send.context import CLOSED_NAMESPACES, CONTACT_FIELDS
    known: dict[str, tuple[tuple[str, ...], str]] = {}
    event_keys = template_event_keys(journey.trigger.event)
    if event_keys is not None:
        known["event"] = (event_keys, f"a documented property of '{journey.trigger.event}' (docs/events.md)")
    if attributes is not None:
        known["contact"] = (CONTACT_FIELDS + tuple(sorted(attributes)),
                            "a contact field or an attribute any contact has in the database")
    errors: list[SpecError] = []
    warnings: list[SpecError] = []
    seen: set[tuple[str, str]] = set()
    for step, path in iter_steps(journey.steps, ("steps",)):
        if step.send is None:
            continue
        for channel in step.send.options:
            if (channel, step.send.template) in seen:
                continue
            seen.add((channel, step.send.template))
            e, w = library.variable_problems(channel, step.send.template, CLOSED_NAMESPACES,
                                             {"contact": CONTACT_FIELDS}, known)
            errors += e
            warnings += w
        for key in ("subject", "preheader"):
            source = getattr(step.send, key)
            if source:
                e, w = library.string_variable_problems(source, (locs.file, *locs.of(path + ("send", key))),
                                                        CLOSED_NAMESPACES, {"contact": CONTACT_FIELDS}, known)
                errors += e
                warnings += w
    return errors, warnings


def translation_warnings(journey: Journey, locs: Locations, library: TemplateLibrary) -> list[SpecError]:
    """A message a journey's templates or subjects pass to `_()` that a catalog of
    translations/ lacks (nurture.rendering.i18n): that locale gets the source text."""
    locales = library.localizer.catalogs.locales()
    if not locales:
        return []
    used: dict[str, tuple[str, int, int]] = {}
    for step, path in iter_steps(journey.steps, ("steps",)):
        if step.send is None:
            continue
        for channel in step.send.options:
            for message, (file, line) in library.translatable(channel, step.send.template).items():
                used.setdefault(message, (file, line, 1))
        for key in ("subject", "preheader"):
            source = getattr(step.send, key)
            if source:
                line, col = locs.of(path + ("send", key))
                for message in library.string_translatable(source, (locs.file, line)):
                    used.setdefault(message, (locs.file, line, col))
    warnings = []
    for message, (file, line, col) in sorted(used.items(), key=lambda item: item[1]):
        missing = [loc for loc in locales if not library.localizer.catalogs.translated(loc, message)]
        if missing:
            warnings.append(SpecError(file, line, col, f"warning: no translation of \"{message}\" in "
                                      + ", ".join(f"translations/{loc}.po" for loc in missing)
                                      + " (that locale gets the source text)"))
    return warnings


def _system_mail_warnings(policies: Policies, locs: Optional[Locations], library: TemplateLibrary) -> list[SpecError]:
    """E-mail double opt-in sends a confirmation and a reminder, SMS double opt-in a "Reply
    START" text (nurture.send.system_mail): without their templates every sign-up would stay
    pending — no marketing ever reaches it."""
    if locs is None:
        return []
    warnings = []
    for channel, templates, what, unless in (
            ("email", DOUBLE_OPT_IN_TEMPLATES, "the confirmation e-mail", ""),
            ("sms", SMS_DOUBLE_OPT_IN_TEMPLATES, "the confirmation text", ", or the person texts START unasked")):
        if not policies.double_opt_in.get(channel):
            continue
        line, col = locs.of(("double_opt_in", channel))
        warnings += [SpecError(e.path, e.line, e.col, f"warning: double_opt_in needs it for {what}: {e.message}"
                               f" (every sign-up stays pending until it exists{unless})", e.hint)
                     for name in templates.values() for e in library.check(channel, name, (locs.file, line, col))]
    return warnings


def _goal_warnings(journey: Journey, locs: Locations) -> list[SpecError]:
    """A goal window shorter than the waits before the journey's first message: a conversion
    after the first message could then never be counted (the start is the first send step)."""
    if journey.goal is None:
        return []
    waited = timedelta(0)
    for step in journey.steps:  # the main path, up to its first send step
        if step.send is not None:
            break
        if step.wait is not None:
            waited += step.wait
        elif step.wait_for is not None:
            waited += step.wait_for.within
        elif step.branch is not None or step.split is not None:
            break  # the paths differ from here: no single answer
    else:
        return []
    if waited > journey.goal.within:
        return [locs.error(("goal", "within"), f"warning: the goal window ({format_duration(journey.goal.within)}) "
                                               f"ends before the first message ({format_duration(waited)} of waiting): "
                                               "no conversion can be credited to the journey")]
    return []


def _template_warnings(journey: Journey, locs: Locations, library: TemplateLibrary,
                       attributes: Optional[Collection[str]] = None) -> list[SpecError]:
    """A marketing e-mail template (and its layout) without `links.unsubscribe`: every mail from
    it gets the standard legal footer appended at send time (nurture.rendering.legal_footer);
    and a contact field name with a typo (template_variable_problems)."""
    warnings = template_variable_problems(journey, locs, library, attributes)[1]
    for step, path in iter_steps(journey.steps, ("steps",)):
        send = step.send
        if send is None or "email" not in send.options or send.purpose != "marketing":
            continue
        if library.html_path(send.template).is_file() and not library.mentions(send.template, "links", "unsubscribe"):
            warnings.append(locs.error(path + ("send", "template"),
                                       f"warning: template '{send.template}' has no visible unsubscribe link "
                                       "({{ links.unsubscribe }}): Nurture appends the standard legal footer to "
                                       "every marketing e-mail from it — extend layouts/base.html or add the link"))
    return warnings


def _load_journey(path: Path, name: str, root: Path, locations: dict[str, Locations], project: ProjectSpec,
                  library: TemplateLibrary) -> tuple[Optional[Journey], list[SpecError]]:
    """One journey file: the journey (None when its shape is wrong) and its own errors."""
    data, locs, errs = _load_file(path, _display(root, path))
    locations[name] = locs
    if errs and data is None:  # unreadable: nothing more to check
        return None, list(errs)
    # A file read with errors (a duplicate key) is checked further all the same: every error of
    # a file in one run. It does not load, whatever the rest says.
    if not isinstance(data, dict):
        return None, list(errs) + [locs.error((), "a journey file holds a mapping (name, trigger, steps, …)")]
    try:
        journey = Journey.model_validate(data)
    except ValidationError as exc:
        # The rest of the file is still checked as far as its shape allows, so one typo
        # does not hide a missing template or a duplicate step id.
        return None, list(errs) + pydantic_errors(exc, locs, Journey) + _raw_cross_checks(data, locs, library)
    found = list(_check_journey(name, journey, locs, project, library))
    return (None if errs else journey), list(errs) + found


def project_fingerprint(root: Path) -> tuple:
    """Every file of the project a load reads (journeys, templates, translations, the
    top-level YAML) with its modification time and size: an edit, a new or a deleted file
    changes it."""
    root = Path(root)
    files = [p for p in root.glob("*.yaml") if p.is_file()]
    for folder in (root / "journeys", root / "templates", root / "translations"):
        if folder.is_dir():
            files.extend(p for p in folder.rglob("*") if p.is_file())
    stamps = []
    for path in sorted(files):
        try:
            info = path.stat()
        except OSError:  # deleted while listed
            continue
        stamps.append((str(path), info.st_mtime_ns, info.st_size))
    return tuple(stamps)


def load_project(root: Path, *, only: Optional[str] = None,
                 attributes: Optional[Collection[str]] = None) -> ProjectSpec:
    """Load and validate the project at `root`; `only` limits journeys to one name;
    `attributes`: the attribute names contacts have in the database (`nurture validate`), for
    the warnings about template variables."""
    root = Path(root).resolve()
    stamp = project_fingerprint(root) if only is None else ()
    errors: list[SpecError] = []
    locations: dict[str, Locations] = {}
    journeys_dir = root / "journeys"
    if not journeys_dir.is_dir():
        errors.append(SpecError(str(root), 1, 1, "no journeys/ folder here: run from a project "
                                "directory or pass --project DIR"))
        return ProjectSpec(root, Policies(), errors=errors)
    policies = load_policies(root, errors, locations)
    if policies.objectives:
        errors.extend(check_objectives(policies.objectives, locations["policies"]))
    project = ProjectSpec(root, policies, locations=locations, errors=errors, fingerprint=stamp)
    project.segments = load_segments(root, errors, locations)
    if (journeys_dir / "scoring.yaml").is_file():
        scoring, locations["scoring"], scoring_errors = load_scoring(
            journeys_dir / "scoring.yaml", _display(root, journeys_dir / "scoring.yaml"))
        errors.extend(scoring_errors)
        if scoring is not None:
            project.extra["scoring"] = scoring
    if (journeys_dir / "conversions.yaml").is_file():
        conversions, locations["conversions"], conversion_errors, entries = load_conversions(
            journeys_dir / "conversions.yaml", _display(root, journeys_dir / "conversions.yaml"))
        errors.extend(conversion_errors)
        from nurture.conversions.validation import check_conversions  # destinations against the registry
        errors.extend(check_conversions(entries, locations["conversions"]))
        if conversions is not None:
            project.extra["conversions"] = conversions
    library = project.templates
    for path in sorted(journeys_dir.glob("*.y*ml")):
        name = path.stem
        if name in SPECIAL_FILES or (only and name != only):
            continue
        if path.suffix not in (".yaml", ".yml"):
            continue
        journey, own = _load_journey(path, name, root, locations, project, library)
        errors.extend(own)
        if own:
            project.journey_errors[name] = own
        elif journey is not None:
            project.journeys[name] = journey
            project.warnings.extend(_template_warnings(journey, locations[name], library, attributes))
            project.warnings.extend(_goal_warnings(journey, locations[name]))
            project.warnings.extend(translation_warnings(journey, locations[name], library))
    project.warnings.extend(_system_mail_warnings(policies, locations.get("policies"), library))
    # a catalog that cannot be read, a line Babel skips; a translation whose placeholders
    # differ from its msgid's (Babel's python-format check)
    catalogs = library.localizer.catalogs
    project.warnings.extend(SpecError(file, line, 1, f"warning: {problem}")
                            for file, line, problem in catalogs.read_problems() + catalogs.placeholder_problems())
    if project.segments:  # destinations against the registry, their keys, segment references
        from nurture.segments.validation import check_segments
        errors.extend(check_segments(project.segments, locations["segments"]))
    if only and only not in project.journeys and not any(e.path.endswith(f"{only}.yaml") for e in errors):
        hint = did_you_mean(only, [p.stem for p in journeys_dir.glob("*.yaml") if p.stem not in SPECIAL_FILES])
        errors.append(SpecError(str(journeys_dir.relative_to(root)), 1, 1, f"no journey named '{only}'", hint))
    project.errors = sorted(set(errors))
    project.warnings = list(dict.fromkeys(project.warnings))  # a template two journeys share: once
    return project
