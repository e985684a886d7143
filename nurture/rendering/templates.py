"""The template library of a project: `templates/email/<name>.html` (+ optional `.txt`),
`templates/sms/<name>.txt`, `templates/layouts/`.

Sandboxed Jinja2, StrictUndefined (a typo in a variable is an error, not an empty greeting),
autoescape for HTML, `None` rendered as empty. HTML sources are CSS-inlined once per file
(see inline_css), so per recipient only Jinja runs.

Template names come from marketer-edited files (a send step's `template:`, `{% include %}`,
`{% extends %}`, `{% import %}`), so a name that would leave templates/ is refused by name,
before any file is opened, both when validating and when loading for a render.
"""
from __future__ import annotations

import difflib
import html as html_lib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from jinja2 import (FileSystemLoader, StrictUndefined, Template, TemplateNotFound,
                    TemplateSyntaxError, UndefinedError, nodes)
from jinja2.exceptions import SecurityError
from jinja2.loaders import split_template_path
from jinja2.sandbox import SandboxedEnvironment

from nurture.rendering.inline_css import inline_template_source, protect_jinja, restore_jinja, stylesheet_of
from nurture.spec.errors import SpecError, did_you_mean


def _finalize(value: Any) -> Any:
    return "" if value is None else value


_DICT_ATTRIBUTES = frozenset(dir(dict))


class _Sandbox(SandboxedEnvironment):
    """The sandbox, with a fast path for what templates read most: a key of a plain dict
    (`contact.first_name`). Jinja first tries `getattr` — for a dict that raises
    AttributeError (~1 µs, several times per message) — then the item. For a plain dict
    and a name that is not a dict attribute the outcome is the item or undefined either way,
    so it is looked up directly; everything else takes the sandbox's own checks."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except (KeyError, TypeError):
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)


class TemplateNameError(TemplateNotFound):
    """A template name that points outside templates/. A TemplateNotFound, so every caller
    that already handles a missing template (RenderError) handles this one too."""


_DRIVE = re.compile(r"^[A-Za-z]:")


def escape_problem(name: str) -> Optional[str]:
    """Why `name` would reach outside templates/, or None. Jinja resolves names from
    templates/ itself, where only a '..' part can climb out ('\\' counts as a separator
    too, so a name written on Windows is judged the same)."""
    if ".." in re.split(r"[/\\]", name):
        return f"template '{name}' points outside the templates/ folder ('..' is not allowed in a template name)"
    return None


def step_name_problem(name: str, channel: str) -> Optional[str]:
    """Why a send step's `template:` cannot name a file below templates/<channel>/, or None.
    Such names are joined onto that folder as paths, so an absolute one would replace it."""
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return (f"template '{name}' is an absolute path: name it relative to templates/{channel}/, "
                f"e.g. 'welcome/hello'")
    return escape_problem(name)


def _refuse(problem: Optional[str], name: str) -> None:
    if problem:
        raise TemplateNameError(name, problem)


class _ConfinedLoader(FileSystemLoader):
    """FileSystemLoader that answers a name leaving templates/ with a TemplateNameError that
    says so (Jinja's own answer is a bare 'template not found: ../x')."""

    def get_source(self, environment, template):
        _refuse(escape_problem(template), template)
        return super().get_source(environment, template)


class _TransformingLoader(_ConfinedLoader):
    """Serves .html sources transformed once per file version (cached by mtime)."""

    def __init__(self, root: Path):
        super().__init__(str(root))
        self.root = root
        self._cache: dict[str, tuple[float, str]] = {}

    def transform(self, source: str) -> str:
        raise NotImplementedError

    def get_source(self, environment, template):
        source, filename, uptodate = super().get_source(environment, template)
        if not template.endswith(".html"):
            return source, filename, uptodate
        mtime = Path(filename).stat().st_mtime
        cached = self._cache.get(template)
        if cached is None or cached[0] != mtime:
            cached = (mtime, self.transform(source))
            self._cache[template] = cached
        return cached[1], filename, uptodate


class _InliningLoader(_TransformingLoader):
    """Serves .html sources with their CSS already inlined; a fragment that extends a layout
    is inlined with the layouts' CSS."""

    def _layout_css(self) -> str:
        layouts = self.root / "layouts"
        if not layouts.is_dir():
            return ""
        return "\n".join(stylesheet_of(p.read_text(encoding="utf-8")) for p in sorted(layouts.glob("*.html")))

    def transform(self, source: str) -> str:
        is_document = "<html" in source.lower()
        return inline_template_source(source, "" if is_document else self._layout_css())


class _TextFromHtmlLoader(_TransformingLoader):
    """Serves every .html template converted to a plain-text template (Jinja tags kept), so a
    template without its own .txt gets a text part by rendering, not by converting each
    recipient's HTML."""

    def transform(self, source: str) -> str:
        protected, tags = protect_jinja(source, comments=False)
        return restore_jinja(html_to_text(protected, keep_title=False), tags)


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: str
    text: str
    preheader: str = ""


_TITLE = re.compile(r"<title[^>]*>.*?</title>", re.S | re.I)
_TAGS = re.compile(r"<(script|style|head)[^>]*>.*?</\1>|<[^>]+>", re.S | re.I)
_BLOCK_END = re.compile(r"</(p|div|tr|h[1-6]|li|table)>|<br\s*/?>", re.I)
# an href in double quotes, single quotes or none (HTML allows all three)
_LINK = re.compile(r"""<a\s[^>]*?(?<![\w-])href\s*=\s*(?:"([^"]+)"|'([^']+)'|([^\s"'>]+))[^>]*>(.*?)</a>""", re.S | re.I)
_SPACES = re.compile(r"[ \t]+")
_BLANKS = re.compile(r"\n\s*\n\s*\n+")


def _link_as_text(link: re.Match) -> str:
    return f"{link.group(4)} ({link.group(1) or link.group(2) or link.group(3)})"


def html_to_text(html: str, keep_title: bool = True) -> str:
    """A readable plain-text part for templates that ship no .txt of their own."""
    if not keep_title:
        html = _TITLE.sub("", html)
    text = _LINK.sub(_link_as_text, html)
    text = _BLOCK_END.sub("\n", text)
    text = html_lib.unescape(_TAGS.sub("", text))
    lines = [_SPACES.sub(" ", line).strip() for line in text.splitlines()]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip() + "\n"


def fragment_to_text(html: str) -> str:
    """Inline markup (a message of `_()`, a translation) as text: links as `label (url)`, tags
    removed, entities decoded; its spacing and line breaks are the derived text's business."""
    return html_lib.unescape(_TAGS.sub("", _LINK.sub(_link_as_text, html)))


_DICT_METHODS = frozenset({"get", "items", "keys", "values"})  # `links.get('x')` reads no key `get`


class TemplateLibrary:
    def __init__(self, root: Path, *, currency: str = "EUR", locale: Optional[str] = None,
                 timezone: Optional[str] = None):
        """`root`: the project's templates/ folder; `currency`, `locale` and `timezone`
        (policies.yaml) are the defaults of the money filter and of contacts without a locale or
        time zone (nurture.rendering.i18n; the catalogs are the project's translations/ folder,
        beside templates/)."""
        from nurture.rendering.i18n import Catalogs, Localizer
        self.root = Path(root)
        self.localizer = Localizer(Catalogs(self.root.parent / "translations"), currency, locale, timezone)
        # auto_reload off: `{% extends %}` would otherwise stat the layout on every render; a
        # changed file reaches a running tick through a new library (flows.runtime reloads).
        # cache_size=-1: the loaded templates in a plain dict — a project has a bounded number
        # of them, and Jinja's LRU cache takes a lock and reorders on every `{% extends %}`
        # lookup (~1.5 µs of a message's render).
        common = dict(undefined=StrictUndefined, finalize=_finalize, trim_blocks=True, lstrip_blocks=True,
                      auto_reload=False, cache_size=-1)
        self.html_env = _Sandbox(loader=_InliningLoader(self.root), autoescape=True, **common)
        self.text_env = _Sandbox(loader=_ConfinedLoader(str(self.root)), autoescape=False,
                                 keep_trailing_newline=True, **common)
        self.derived_text_env = _Sandbox(loader=_TextFromHtmlLoader(self.root), autoescape=False, **common)
        for env in (self.html_env, self.text_env):
            self.localizer.install(env)
        # the text part derived from HTML: markup a message of `_()` carries becomes text too
        self.localizer.install(self.derived_text_env, text_of=fragment_to_text)
        self._strings: dict[str, Template] = {}

    # -- lookup
    def html_path(self, name: str) -> Path:
        return self.root / "email" / f"{name}.html"

    def email_text_path(self, name: str) -> Path:
        return self.root / "email" / f"{name}.txt"

    def sms_path(self, name: str) -> Path:
        return self.text_path("sms", name)

    def text_path(self, channel: str, name: str) -> Path:
        """A text channel's template: templates/sms/<name>.txt, templates/whatsapp/<name>.txt."""
        return self.root / channel / f"{name}.txt"

    def names(self, channel: str) -> list[str]:
        base = self.root / channel
        suffix = ".html" if channel == "email" else ".txt"
        return sorted(str(p.relative_to(base))[: -len(suffix)] for p in base.rglob(f"*{suffix}")) if base.is_dir() else []

    def string(self, source: str) -> Template:
        template = self._strings.get(source)
        if template is None:
            template = self.text_env.from_string(source)
            self._strings[source] = template
        return template

    # -- validation
    def check(self, channel: str, name: str, where: tuple[str, int, int]) -> list[SpecError]:
        """Errors for a template reference: a name outside templates/, a missing file (with a
        suggestion), bad Jinja, and the same for every template it extends, includes or
        imports — found now, not by every render of the journey."""
        file, line, col = where
        problem = step_name_problem(name, channel)
        if problem:
            return [SpecError(file, line, col, problem)]
        path = self.html_path(name) if channel == "email" else self.text_path(channel, name)
        if not path.is_file():
            hint = did_you_mean(name, self.names(channel))
            return [SpecError(file, line, col, f"template '{name}' not found: expected {self._rel(path)}", hint)]
        files = [(self.html_env, path)] if channel == "email" else [(self.text_env, path)]
        if channel == "email" and self.email_text_path(name).is_file():
            files.append((self.text_env, self.email_text_path(name)))
        errors: list[SpecError] = []
        for env, p in files:
            errors.extend(self._check_tree(env, [p.relative_to(self.root).as_posix()]))
        return errors

    def check_string(self, source: str, where: tuple[str, int, int]) -> list[SpecError]:
        """Errors of a subject or preheader, located in the journey; a template it includes is
        checked like any other."""
        try:
            self.text_env.from_string(source)
            ast = self.text_env.parse(source)
        except TemplateSyntaxError as exc:
            return [SpecError(where[0], where[1], where[2], f"template syntax error: {exc.message}")]
        todo: list[str] = []
        errors = self._check_references(ast, lambda _line: where, todo)
        return errors + self._check_tree(self.text_env, todo)

    def variable_problems(self, channel: str, name: str, closed: dict[str, tuple[str, ...]],
                          near: dict[str, tuple[str, ...]], known: Optional[dict[str, tuple[tuple[str, ...], str]]] = None
                          ) -> tuple[list[SpecError], list[SpecError]]:
        """(errors, warnings) about the variables a template (and what it extends, includes or
        imports) reads: `links.unsubcribe` where `closed` fixes the keys of `links` is an error
        (every render would fail); `contact.frist_name` close to a key `near` lists is a warning
        (an attribute of that name may exist). `known`: for an open namespace, every name known
        to exist and where that knowledge comes from (`event` → the trigger's documented
        properties; `contact` → its fields and the attributes in the database): any other name
        is a warning with a did-you-mean. Located in the template file."""
        errors: list[SpecError] = []
        warnings: list[SpecError] = []
        for current, ast in self._parsed_tree(channel, name):
            e, w = _variable_findings(ast, lambda node: (f"templates/{current}", node.lineno or 1, 1),
                                      closed, near, known or {})
            errors += e
            warnings += w
        return sorted(set(errors)), sorted(set(warnings))

    def string_variable_problems(self, source: str, where: tuple[str, int, int], closed: dict[str, tuple[str, ...]],
                                 near: dict[str, tuple[str, ...]],
                                 known: Optional[dict[str, tuple[tuple[str, ...], str]]] = None
                                 ) -> tuple[list[SpecError], list[SpecError]]:
        """`variable_problems` of a subject or preheader, located at `where` in the journey (a
        template it includes is checked with the step's own templates, not here)."""
        try:
            ast = self.text_env.parse(source)
        except TemplateSyntaxError:  # check_string reports it
            return [], []
        errors, warnings = _variable_findings(ast, lambda _node: where, closed, near, known or {})
        return sorted(set(errors)), sorted(set(warnings))

    def translatable(self, channel: str, name: str) -> dict[str, tuple[str, int]]:
        """The messages a template (and what it loads) passes to `_()` / `gettext()` as a
        literal: message → (template file, line) of its first use."""
        found: dict[str, tuple[str, int]] = {}
        for current, ast in self._parsed_tree(channel, name):
            for message, where in _gettext_literals(ast, f"templates/{current}").items():
                found.setdefault(message, where)
        return found

    def _parsed_tree(self, channel: str, name: str, with_text: bool = True) -> Iterator[tuple[str, Any]]:
        """(path below templates/, parsed AST) of a send step's template and of every template it
        extends, includes or imports, each once; files that cannot be read or parsed are left out
        (check() reports them). Nothing for a name outside templates/. `with_text`: an e-mail's
        own .txt part too."""
        if step_name_problem(name, channel):
            return
        paths = [self.html_path(name)] if channel == "email" else [self.text_path(channel, name)]
        if channel == "email" and with_text and self.email_text_path(name).is_file():
            paths.append(self.email_text_path(name))
        todo, seen = [p.relative_to(self.root).as_posix() for p in paths if p.is_file()], set()
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            try:
                ast = self.html_env.parse((self.root / current).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, TemplateSyntaxError):
                continue
            yield current, ast
            todo.extend(self._loadable(ast))

    def string_translatable(self, source: str, where: tuple[str, int]) -> dict[str, tuple[str, int]]:
        """The `_()` literals of a subject or preheader, located at `where` (file, line)."""
        try:
            ast = self.text_env.parse(source)
        except TemplateSyntaxError:
            return {}
        return {k: where for k in _gettext_literals(ast, where[0])}

    def mentions(self, name: str, variable: str, attribute: str) -> bool:
        """Whether the e-mail template `name`, or a template it extends, includes or imports,
        reads `variable.attribute` (or `variable['attribute']`) — e.g. `links.unsubscribe`.
        False for a template that cannot be parsed (its errors are reported elsewhere)."""
        for _, ast in self._parsed_tree("email", name, with_text=False):
            for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
                key = node.attr if isinstance(node, nodes.Getattr) else \
                    node.arg.value if isinstance(node.arg, nodes.Const) else None
                if isinstance(node.node, nodes.Name) and node.node.name == variable and key == attribute:
                    return True
        return False

    def _check_tree(self, env: SandboxedEnvironment, todo: list[str]) -> list[SpecError]:
        """Errors of the templates in `todo` (names below templates/) and of every template
        they load, each file once; a worklist, because include chains may be long."""
        errors: list[SpecError] = []
        seen: set[str] = set()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            path = self.root / name
            ast, parse_errors = self._parse(env, name, path)
            errors.extend(parse_errors)
            if ast is not None:
                errors.extend(self._check_references(ast, lambda line: (self._rel(path), line, 1), todo))
        return errors

    def _parse(self, env: SandboxedEnvironment, name: str,
               path: Path) -> tuple[Optional[nodes.Template], list[SpecError]]:
        """The template's syntax tree, or the errors that prevent one."""
        try:
            # Parse the file as written first: CSS inlining reflows the document, so an
            # error found only in the inlined source would point at the wrong line.
            ast = env.parse(path.read_text(encoding="utf-8"), name, str(path))
            env.get_template(name)
        except TemplateSyntaxError as exc:
            return None, [SpecError(self._rel(Path(exc.filename or path)), exc.lineno or 1, 1,
                                    f"template syntax error: {exc.message}")]
        except TemplateNotFound as exc:
            return None, [SpecError(self._rel(path), 1, 1, f"template not found: {exc.name}")]
        except UnicodeDecodeError as exc:
            return None, [SpecError(self._rel(path), 1, 1, f"not UTF-8 text: {exc.reason}")]
        return ast, []

    def _check_references(self, ast: nodes.Template, locate: Callable[[int], tuple[str, int, int]],
                          todo: list[str]) -> list[SpecError]:
        """Errors of the names `ast` extends, includes or imports (outside templates/, or
        missing); `locate(line)` gives an error's (file, line, col). Found templates go onto
        `todo`, to be checked in turn."""
        errors: list[SpecError] = []
        for ref in _references(ast):
            file, line, col = locate(ref.line)
            problem = next(filter(None, map(escape_problem, ref.names)), None)
            if problem:
                errors.append(SpecError(file, line, col, problem))
                continue
            found = next((n for n in map(self._resolve, ref.names) if n is not None), None)
            if found is not None:
                todo.append(found)
            elif ref.complete and not ref.optional:
                wanted = ref.names[0]
                errors.append(SpecError(file, line, col, f"template '{wanted}' not found: expected templates/{wanted}",
                                        did_you_mean(wanted, self._all_names())))
        return errors

    def _loadable(self, ast: nodes.Template) -> list[str]:
        """The files below templates/ a parsed template loads (names outside it are left out:
        check() reports them)."""
        return [found for ref in _references(ast) for n in ref.names
                if escape_problem(n) is None and (found := self._resolve(n))]

    def _resolve(self, name: str) -> Optional[str]:
        """The file name below templates/ that Jinja would load for `name`, if it exists."""
        normalized = "/".join(split_template_path(name))
        return normalized if normalized and (self.root / normalized).is_file() else None

    def _all_names(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root.parent))
        except ValueError:
            return str(path)

    # -- rendering
    def email(self, name: str) -> tuple[Template, Optional[Template]]:
        _refuse(step_name_problem(name, "email"), name)
        html = self.html_env.get_template(f"email/{name}.html")
        if self.email_text_path(name).is_file():
            text = self.text_env.get_template(f"email/{name}.txt")
        else:
            text = self.derived_text_env.get_template(f"email/{name}.html")
        return html, text

    def sms(self, name: str) -> Template:
        return self.text("sms", name)

    def text(self, channel: str, name: str) -> Template:
        """The template of a text channel (sms, whatsapp)."""
        _refuse(step_name_problem(name, channel), name)
        return self.text_env.get_template(f"{channel}/{name}.txt")

    def prepare_email(self, name: str, subject: str, preheader: Optional[str] = None) -> "PreparedEmail":
        """Everything about a send step that is the same for every recipient, looked up and
        compiled once; `render(context)` then only runs Jinja."""
        html_t, text_t = self.email(name)
        return PreparedEmail(*(_flat_globals(t) for t in (html_t, text_t, self.string(subject),
                                                           self.string(preheader) if preheader else None)))

    def prepare_sms(self, name: str) -> Template:
        return self.prepare_text("sms", name)

    def prepare_text(self, channel: str, name: str) -> Template:
        return _flat_globals(self.text(channel, name))

    def render_email(self, name: str, subject: str, context: dict[str, Any],
                     preheader: Optional[str] = None) -> RenderedEmail:
        return self.prepare_email(name, subject, preheader).render(context)

    def render_sms(self, name: str, context: dict[str, Any]) -> str:
        return self.sms(name).render(context).strip()


def _variable_findings(ast: Any, where_of: Any, closed: dict[str, tuple[str, ...]], near: dict[str, tuple[str, ...]],
                       known: dict[str, tuple[tuple[str, ...], str]]) -> tuple[list[SpecError], list[SpecError]]:
    """(errors, warnings) of the `variable.key` reads in one parsed template (see
    TemplateLibrary.variable_problems); `where_of(node)` locates a read."""
    errors: list[SpecError] = []
    warnings: list[SpecError] = []
    # names the template binds itself (`{% for step in … %}`, `{% set journey = … %}`, `{% with %}`,
    # a macro's parameters) are its own, whatever namespace they shadow
    bound = {n.name for n in ast.find_all(nodes.Name) if n.ctx in ("store", "param")}
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        if not isinstance(node.node, nodes.Name) or node.node.name in bound:
            continue
        key = node.attr if isinstance(node, nodes.Getattr) else \
            node.arg.value if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str) else None
        variable = node.node.name
        if key is None or key in _DICT_METHODS:
            continue
        where = where_of(node)
        if variable in closed and key not in closed[variable]:
            hint = did_you_mean(key, closed[variable]) or f"it has: {', '.join(closed[variable])}"
            errors.append(SpecError(*where, f"'{variable}.{key}' does not exist: every render of this "
                                            "template would fail", hint))
        elif variable in known and key not in known[variable][0]:
            names, source = known[variable]
            hint = did_you_mean(key, names)
            warnings.append(SpecError(*where, f"warning: '{variable}.{key}' is not {source}"
                                              + (f"; {hint}" if hint else "")))
        elif variable in near and key not in near[variable]:
            close = difflib.get_close_matches(key, near[variable], n=1, cutoff=0.75)
            if close:
                warnings.append(SpecError(*where, f"warning: '{variable}.{key}' is not a {variable} field; "
                                                  f"did you mean '{variable}.{close[0]}'? (only an attribute "
                                                  f"named '{key}' would fill it)"))
    return errors, warnings


@dataclass(frozen=True)
class _Reference:
    """One `{% extends/include/import %}` of a template: the names it may load (an include
    takes a list and loads the first that exists), whether all of them are known before
    rendering, and whether a missing one is allowed (`ignore missing`)."""
    names: list[str]
    line: int
    complete: bool
    optional: bool


_LOADING_TAGS = (nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)


def _references(ast: nodes.Template) -> Iterator[_Reference]:
    """The templates a parsed template loads. Names computed at render time cannot be known
    here; they are left to the render (whose loader refuses names outside templates/)."""
    for node in ast.find_all(_LOADING_TAGS):
        items = node.template.items if isinstance(node.template, (nodes.List, nodes.Tuple)) else [node.template]
        names = [i.value for i in items if isinstance(i, nodes.Const) and isinstance(i.value, str)]
        if names:
            yield _Reference(names, node.lineno, len(names) == len(items),
                             bool(getattr(node, "ignore_missing", False)))


def _gettext_literals(ast: Any, file: str) -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for call in ast.find_all(nodes.Call):
        if isinstance(call.node, nodes.Name) and call.node.name in ("_", "gettext", "ngettext"):
            for arg in call.args[:2 if call.node.name == "ngettext" else 1]:
                if isinstance(arg, nodes.Const) and isinstance(arg.value, str):
                    out.setdefault(arg.value, (file, call.lineno or 1))
    return out


def _flat_globals(template: Optional[Template]) -> Optional[Template]:
    """Jinja keeps a template's globals as a ChainMap over the environment's, and copies it
    into every render context: at thousands of renders a second that copy is a third of the
    render. Prepared templates get a plain dict (the globals are complete by now)."""
    if template is not None and not isinstance(template.globals, dict):
        template.globals = dict(template.globals)
    return template


@dataclass(frozen=True)
class PreparedEmail:
    html: Template
    text: Optional[Template]
    subject: Template
    preheader: Optional[Template]

    def render(self, context: dict[str, Any]) -> RenderedEmail:
        html = _render(self.html, context)
        text = _BLANKS.sub("\n\n", _render(self.text, context)).strip() + "\n" if self.text is not None else html_to_text(html)
        subject = " ".join(_render(self.subject, context).split())
        pre = " ".join(_render(self.preheader, context).split()) if self.preheader is not None else ""
        return RenderedEmail(subject, with_preheader(html, pre) if pre else html, text, pre)


_BODY = re.compile(r"<body\b[^>]*>", re.I)


def with_preheader(html: str, preheader: str) -> str:
    """`html` with the preheader — the line inboxes show after the subject — as the hidden
    element right after `<body>` (at the start of a fragment), HTML-escaped: it may hold a
    contact's data and is rendered without autoescaping, like the subject."""
    hidden = ('<div class="preheader" style="display:none;font-size:1px;line-height:1px;max-height:0;'
              f'max-width:0;opacity:0;overflow:hidden;mso-hide:all">{html_lib.escape(preheader)}</div>')
    body = _BODY.search(html)
    return html[:body.end()] + hidden + html[body.end():] if body else hidden + html


def _render(template: Template, context: dict[str, Any]) -> str:
    """`template.render(context)` without its two copies of the context: the render context
    is built once from the template's globals and the given variables (what `render` does,
    minus the copying, measurable at thousands of renders a second)."""
    env = template.environment
    try:
        return env.concat(template.root_render_func(template.new_context({**template.globals, **context},  # type: ignore[attr-defined]
                                                                          shared=True)))
    except Exception:
        env.handle_exception()
    raise AssertionError("unreachable: handle_exception re-raises")  # pragma: no cover


# What a template and the values it is given can raise: the message fails alone (`render_error`),
# never its batch. ArithmeticError: `{{ total / count }}` with a stored 0, `| money` of 1e300
# (babel's decimal.InvalidOperation), an overflow.
RenderError = (UndefinedError, TemplateSyntaxError, TemplateNotFound, SecurityError, TypeError, ValueError,
               ArithmeticError)
