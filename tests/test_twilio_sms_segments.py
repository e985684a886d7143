"""SMS segment counts (what Twilio bills): GSM-7 bodies take 160 characters in one segment and
153 per segment when split, extension characters (€ [ ] { } …) count twice; any other character
makes the body UCS-2: 70 in one segment, 67 per segment when split, characters outside the
BMP (emoji) count as two UTF-16 units. Such a two-unit character (ESC + code, a surrogate pair)
is never split over two segments (3GPP TS 23.038 and Twilio: "may not be split so that the
escape character and the following character end up in separate parts"). `nurture preview` prints the count for SMS steps."""
from __future__ import annotations

import os

import pytest

from nurture.rendering.email_message import sms_segments
from tests.conftest import write_project


@pytest.mark.parametrize("body, expected", [
    ("Hi", ("GSM-7", 1)),
    ("a" * 160, ("GSM-7", 1)),
    ("a" * 161, ("GSM-7", 2)),
    ("a" * 306, ("GSM-7", 2)),
    ("a" * 307, ("GSM-7", 3)),
    ("€" * 80, ("GSM-7", 1)),           # 160 septets
    ("€" * 81, ("GSM-7", 2)),           # 162 septets
    ("Grüße aus Köln! ¿Qué tal? Ñ", ("GSM-7", 1)),
    ("¿Sí?", ("UCS-2", 1)),            # í is not in the GSM-7 alphabet (ì is)
    ("ł" * 70, ("UCS-2", 1)),
    ("ł" * 71, ("UCS-2", 2)),
    ("ł" * 134, ("UCS-2", 2)),
    ("ł" * 135, ("UCS-2", 3)),
    ("😀" * 35, ("UCS-2", 1)),          # 70 UTF-16 units
    ("😀" * 36, ("UCS-2", 2)),
    ("a" * 159 + "ł", ("UCS-2", 3)),    # one non-GSM character turns 160 characters into 3 segments
])
def test_segment_count(body, expected):
    assert sms_segments(body) == expected


def test_nurture_preview_prints_the_encoding_and_segment_count_of_an_sms(tmp_path):
    root = write_project(tmp_path / "p", {"deal": "name: deal\ntrigger: {event: signup}\nsteps:\n"
                                                  "  - id: text\n    send: {channel: sms, template: deal}\n"},
                         templates={"sms/deal.txt": "Hi {{ contact.first_name }}! " + "Deal ł " * 12 + "Reply STOP"})
    env = {**os.environ, "NURTURE_PROJECT": str(root), "NURTURE_DATABASE_URL": f"sqlite:///{tmp_path / 'p.db'}",
           "NURTURE_DATA_DIR": str(root / ".nurture"), "COLUMNS": "200"}
    from tests.cli_inproc import run_cli
    result = run_cli(["preview", "deal"], env)
    assert result.returncode == 0, result.stderr
    body = next(line for line in result.stdout.splitlines() if line.startswith("Hi "))
    assert sms_segments(body) == ("UCS-2", 2)
    assert f"{len(body)} characters, UCS-2, 2 segment(s)" in result.stdout


@pytest.mark.parametrize("body, expected", [
    # 152 septets, then € (ESC + code): it does not fit the one septet left, segment 2 starts
    # with it: 2 + 152 = 154 > 153, so a third segment (a plain count says 306 / 153 = 2).
    ("a" * 152 + "€" + "a" * 152, ("GSM-7", 3)),
    ("a" * 151 + "€" + "a" * 153, ("GSM-7", 2)),    # € fits segment 1 exactly: 153 | 153
    ("€" * 153, ("GSM-7", 3)),                       # 76 per segment: 76 | 76 | 1
    # UCS-2: 66 units, then an emoji (a surrogate pair) that does not fit the one unit left
    ("ж" * 66 + "😀" + "ж" * 66, ("UCS-2", 3)),
    ("ж" * 65 + "😀" + "ж" * 67, ("UCS-2", 2)),      # the pair fits segment 1 exactly: 67 | 67
    ("😀" * 67, ("UCS-2", 3)),                       # 33 pairs (66 units) per segment: 33 | 33 | 1
], ids=["gsm7_escape_at_boundary", "gsm7_escape_fits", "gsm7_all_escapes", "ucs2_pair_at_boundary",
        "ucs2_pair_fits", "ucs2_all_pairs"])
def test_a_two_unit_character_is_never_split_over_two_segments(body, expected):
    assert sms_segments(body) == expected
