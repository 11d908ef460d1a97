"""Text from a CRM made safe for where it is shown: a terminal, rich markup, JSON, YAML drafts and BB-code.

Whatever a portal sends (a deal title, a user name, an error description) is data. A terminal must not
run its escape sequences, rich must not read its brackets as markup, a YAML draft must not take its line
breaks or quotes as structure, and the BB-code crmbridge writes back to the portal must not turn it into
links or formatting. Each function here does one of these, and changes nothing a person would read.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["JsonText", "bb_safe", "for_terminal", "json_text", "yaml_comment", "yaml_quoted"]

#: characters that steer a terminal or reorder what it shows: C0 and C1 controls, DEL, bidi overrides and
#: isolates (a "Trojan source" title reads differently from what it is), and Unicode line / paragraph separators
_STEERING = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A),
             0x2028, 0x2029, 0x200E, 0x200F, 0x061C, 0xFEFF]


def _escaped(code: int) -> str:
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_TERMINAL = {code: _escaped(code) for code in _STEERING}
_TERMINAL_MULTILINE = {code: text for code, text in _TERMINAL.items() if code not in (0x0A, 0x09)}
_ANY_STEERING = re.compile("[" + "".join(re.escape(chr(code)) for code in _STEERING) + "]")


def for_terminal(text: Any, *, multiline: bool = False) -> str:
    """`text` with every control character shown escaped (`\\x1b`), so a terminal prints it and runs nothing.

    With `multiline`, line breaks and tabs stay (a log message, a table cell that may wrap).
    """
    text = text if isinstance(text, str) else str(text)
    if _ANY_STEERING.search(text) is None:
        return text
    return text.translate(_TERMINAL_MULTILINE if multiline else _TERMINAL)


# --- JSON ------------------------------------------------------------------------------------------------

#: what `json.dumps(ensure_ascii=False)` leaves raw but a terminal would act on (C1 controls, bidi controls);
#: JSON text outside strings is ASCII, so escaping these characters anywhere keeps the JSON valid and equal
_JSON_RAW = {code: f"\\u{code:04x}" for code in _STEERING if code >= 0x7F}
_ANY_JSON_RAW = re.compile("[" + "".join(re.escape(chr(code)) for code in _JSON_RAW) + "]")


class JsonText(str):
    """Text `json_text(..., indent=None)` made already: written as it is where JSON is written item by item."""

    __slots__ = ()


def json_text(payload: Any, *, indent: int | None = 2) -> str:
    """JSON with non-ASCII text readable (Cyrillic stays Cyrillic) and nothing a terminal would act on."""
    text = json.dumps(payload, ensure_ascii=False, indent=indent, default=str)
    # translate() looks every character of Cyrillic text up in the table (1.7 s for 45,000 violations): only when
    # there is one to escape
    return text if _ANY_JSON_RAW.search(text) is None else text.translate(_JSON_RAW)


# --- YAML ------------------------------------------------------------------------------------------------

_YAML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\x00": "\\0", "\x85": "\\N",
                 "\u2028": "\\L", "\u2029": "\\P", "\xa0": "\\_"}


def _yaml_printable(char: str) -> bool:
    """YAML 1.2's printable set, minus what YAML 1.1 readers take as a line break and invisible steering."""
    code = ord(char)
    if code in _TERMINAL or code in (0xFFFE, 0xFFFF) or 0xD800 <= code <= 0xDFFF:
        return False
    return code >= 0x20 or code == 0x09


def yaml_quoted(text: Any) -> str:
    """A YAML double-quoted scalar that reads back as exactly `text`, whatever it contains."""
    text = text if isinstance(text, str) else str(text)
    out = ['"']
    for char in text:
        escaped = _YAML_ESCAPES.get(char)
        if escaped is not None:
            out.append(escaped)
        elif _yaml_printable(char):
            out.append(char)
        else:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def yaml_comment(text: Any) -> str:
    """Text for a YAML `# comment`: one line, nothing invisible (shown escaped), no line break of any kind."""
    text = text if isinstance(text, str) else str(text)
    return "".join(char if _yaml_printable(char) and char != "\t" else _escaped(ord(char)) for char in text).strip()


# --- BB-code ---------------------------------------------------------------------------------------------

#: square brackets open and close BB-code tags; their full-width look-alikes read the same and open nothing
_LOOKALIKES = str.maketrans({"[": "［", "]": "］"})


def bb_safe(text: Any) -> Any:
    """Text for BB-code the portal renders (comments, notifications, messages, task and to-do descriptions):
    a CRM value like `[url=…]` stays text, never a link or a closing tag. Idempotent; non-text values are
    returned unchanged."""
    if not isinstance(text, str) or ("[" not in text and "]" not in text):
        return text
    return text.translate(_LOOKALIKES)
