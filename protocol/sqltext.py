"""SQL text helpers shared by the SQL protocols: the verb (l7_rpc_api key) and a printable,
bounded statement text (l7_trace path)."""
import re

PATH_MAX = 128
_RE_WORD = re.compile(r"[A-Za-z_]+")
_RE_WS = re.compile(r"\s+")


def verb_finder(lead_re):
    """A ``sql_verb(text)`` that skips what ``lead_re`` matches (white space, comments and
    opening parentheses, in the dialect's syntax) and returns the first keyword, upper-case."""
    lead = lead_re.match
    word = _RE_WORD.match

    def sql_verb(text):
        m = word(text, lead(text).end())
        return m.group(0).upper()[:32] if m else "UNKNOWN"
    return sql_verb


def sql_path(text):
    """White space collapsed, at most PATH_MAX characters (the reporter sanitises what it
    prints: pipeline/report.py clean)."""
    return _RE_WS.sub(" ", text).strip()[:PATH_MAX]
