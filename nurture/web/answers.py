"""The JSON answers of every endpoint.

A hostile body can carry a lone surrogate (the JSON escape `"\\ud800"` decodes to one), and an
error message that names the bad value or key repeats it; Starlette's JSONResponse encodes its
text as strict UTF-8, so the answer to that body was a 500. Here such a character is written
as its JSON escape again: the answer is the 4xx it was meant to be, and still valid JSON."""
from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse as _StarletteJSON


class JSONResponse(_StarletteJSON):
    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))
        return text.encode("utf-8", "backslashreplace")
