"""A project kept in step with its files in a long-lived process (`nurture web`), by the
fingerprint `nurture serve` and the warm runner reload by (`project_fingerprint`: every file's
time and size — a few stat calls, no parsing): `refresh` loads the project again only when an
edit, a new or a deleted file changed it.

Two specs come out of it. `latest` is the files as they are now, errors and all: what the
instant triggers tick (a journey with errors does not run, and with a broken policies.yaml none
does — as in the scheduled ticks). `usable` is the latest one whose policies.yaml loaded: what
the pages and the ingest endpoints read the policies from, so that a typo in a file never
makes the web process refuse or lose an event. New errors are logged once per change of the
files, each as `path:line:col: message`, never with a traceback.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from nurture.spec.project import ProjectSpec, load_project, project_fingerprint

log = logging.getLogger("nurture.project")


class LiveProject:
    def __init__(self, spec: ProjectSpec):
        self.latest = spec
        self.usable = spec
        self._stamp = spec.fingerprint or project_fingerprint(spec.root)
        self._lock = threading.Lock()

    @property
    def root(self) -> Path:
        return self.latest.root

    def refresh(self) -> ProjectSpec:
        """The project as its files are now (`latest`), loaded again if they changed."""
        if project_fingerprint(self.root) == self._stamp:
            return self.latest
        with self._lock:  # one load per change, however many threads notice it
            stamp = project_fingerprint(self.root)
            if stamp != self._stamp:
                spec = load_project(self.root)
                self._stamp = spec.fingerprint or stamp
                self.latest = spec
                if not spec.fatal_errors:
                    self.usable = spec
                self._report(spec)
        return self.latest

    def _report(self, spec: ProjectSpec) -> None:
        if not spec.errors:
            log.info("project files changed: loaded %s again", spec.root)
            return
        if spec.fatal_errors:
            head = ("the project has errors: no journey runs here until they are fixed; the pages and "
                    "the event endpoints go on with the last valid policies")
        else:
            head = "the project has errors: the journeys they concern do not run here until they are fixed"
        log.warning("%s\n%s", head, "\n".join(str(e) for e in spec.errors))
