"""Ignore rules with git's exact ``.gitignore`` semantics, for a pruning walk.

The scanner walks the folder top-down with ``os.scandir``. It starts from
:meth:`IgnoreRules.root`, asks :meth:`IgnoreRules.is_ignored` about every entry
of a directory, never descends into an ignored directory, and gets the rules in
force inside a kept directory with :meth:`IgnoreRules.child` (passing the text
of that directory's ``.gitignore``, or ``None``)::

    rules = IgnoreRules.root().child("", read_text(".gitignore"))
    # for each entry `rel` of directory `d`, judged by the rules of `d`:
    if rules_of_d.is_ignored(rel, is_dir):
        continue                     # an ignored directory is pruned
    if is_dir:
        rules_of_rel = rules_of_d.child(rel, read_text(rel + "/.gitignore"))

Pruning is not an optimisation: it *is* git's rule that "it is not possible
to re-include a file if a parent directory of that file is excluded". A
``!pattern`` can re-include a directory's entry only while the directory
itself is kept.

Semantics follow git's ``dir.c`` and ``wildmatch.c`` (git 2.x), byte for
byte on the UTF-8 encoding of paths and patterns:

* lines are split on ``\\n`` (a ``\\r`` before it is dropped, a UTF-8 BOM at
  the start is skipped); a line starting with ``#`` is a comment; trailing
  spaces are removed unless escaped with a backslash; blank lines are skipped;
* a leading ``!`` negates (``\\!`` is a literal ``!``, ``\\#`` a literal ``#``);
* a trailing ``/`` makes the pattern match directories only;
* a pattern with no other ``/`` matches the entry's name at any depth below
  its ``.gitignore``; otherwise it is anchored to the ``.gitignore``'s
  directory (a leading ``/`` only anchors);
* ``*``, ``?`` and bracket expressions (ranges, ``!``/``^`` negation, POSIX
  ``[:classes:]``) never match ``/``; ``**/`` at the start or after a ``/``
  matches zero or more directories, ``/**`` at the end everything inside,
  a lone ``**`` everything; any other ``**`` is a ``*``. As in git, the
  literal prefix of an anchored pattern (up to the first ``*?[\\``) is
  compared first and the rest is matched as a pattern of its own, so a ``**``
  just after that prefix counts as leading (``a**/b`` matches ``ax/y/b``);
* precedence: the deepest ``.gitignore`` first, then its parents, then the
  root's ``extra_patterns`` (like ``.git/info/exclude``); inside one list the
  last matching pattern wins. The first match in that order decides.

Besides the patterns, ``.syncron`` at the root (the node's state) is always
ignored, and so is every directory named ``.git`` unless the rules were made
with ``ignore_git_dirs=False``; no ``!`` pattern can re-include them.

Speed: each :class:`IgnoreRules` compiles all the patterns in force once,
into regexes whose alternatives are in precedence order (name-only patterns
run on the entry's name, the others on its path; ``dir/`` patterns only in the
directory variant), so :meth:`~IgnoreRules.is_ignored` costs two
``fullmatch`` calls in C, and a directory without a ``.gitignore`` shares its
parent's object.

The matcher is built here rather than on :mod:`pathspec` on purpose:
pathspec's gitignore regexes answer "is this file, or a directory above it,
matched" for a flat list of file paths, while a pruning walk needs the exact
per-entry answer with git's ``is_dir`` distinction and its pattern-prefix
quirk. The git oracle test in ``tests/test_ignore.py`` checks the result
against ``git ls-files --others --exclude-standard``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from syncron_p2p.paths import STATE_DIR

GITIGNORE_NAME = ".gitignore"
GIT_DIR_NAME = ".git"

_GLOB_SPECIAL = frozenset(b"*?[\\")
_SLASH = ord("/")
_BACKSLASH = ord("\\")
_NEVER = b"(?!)"

_POSIX_CLASSES: dict[bytes, frozenset[int]] = {
    b"alnum": frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"),
    b"alpha": frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"),
    b"blank": frozenset(b" \t"),
    b"cntrl": frozenset([*range(0x20), 0x7F]),
    b"digit": frozenset(b"0123456789"),
    b"graph": frozenset(range(0x21, 0x7F)),
    b"lower": frozenset(b"abcdefghijklmnopqrstuvwxyz"),
    b"print": frozenset(range(0x20, 0x7F)),
    b"punct": frozenset(b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
    b"space": frozenset(b" \t\n\r"),
    b"upper": frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    b"xdigit": frozenset(b"0123456789ABCDEFabcdef"),
}


class _Unmatchable(Exception):
    """The pattern can match nothing (git's ``WM_ABORT_ALL`` at parse time)."""


@dataclass(frozen=True, slots=True)
class IgnorePattern:
    """One parsed line of a ``.gitignore``.

    ``base`` is the directory of the file it came from (``""`` for the root),
    ``regex`` the pattern translated to a regular expression over the UTF-8
    bytes of the entry's name (``name_only``) or of its whole folder-relative
    path.
    """

    text: str
    base: str
    negated: bool
    dir_only: bool
    #: True when the pattern has no ``/`` (but a trailing one): it matches the
    #: entry's name, at any depth below ``base``; ``regex`` then applies to the
    #: name alone.
    name_only: bool
    regex: bytes


def split_lines(text: str) -> list[str]:
    """The pattern lines of a ``.gitignore``, as git reads them.

    Skips a leading BOM, comments and blank lines, drops a ``\\r`` before a
    newline and unescaped trailing spaces.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    lines: list[str] = []
    for raw in text.split("\n"):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line or line.startswith("#"):
            continue
        line = _trim_trailing_spaces(line)
        if line:
            lines.append(line)
    return lines


def _trim_trailing_spaces(line: str) -> str:
    last_space: int | None = None
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == " ":
            if last_space is None:
                last_space = i
        elif ch == "\\":
            i += 1
            if i == len(line):
                return line
            last_space = None
        else:
            last_space = None
        i += 1
    return line if last_space is None else line[:last_space]


def parse_pattern(line: str, base: str) -> IgnorePattern:
    """Parse one non-comment line from the ``.gitignore`` in directory ``base``."""
    text = line
    negated = line.startswith("!")
    body = line[1:] if negated else line
    dir_only = body.endswith("/")
    if dir_only:
        body = body[:-1]
    raw = body.encode("utf-8")
    name_only = b"/" not in raw
    prefix = (base + "/").encode("utf-8") if base else b""
    try:
        if not raw:
            raise _Unmatchable
        if name_only:
            regex = _translate(raw)
        else:
            if raw.startswith(b"/"):
                raw = raw[1:]
            literal_len = next((i for i, c in enumerate(raw) if c in _GLOB_SPECIAL), len(raw))
            regex = (
                re.escape(prefix)
                + re.escape(raw[:literal_len])
                + _translate(raw[literal_len:], pathname=True)
            )
    except _Unmatchable:
        regex = _NEVER
    return IgnorePattern(
        text=text, base=base, negated=negated, dir_only=dir_only, name_only=name_only, regex=regex
    )


_STAR = b"[^/]*"  # one ``*``: any run within a path component
_DIRS = b"(?:.*/)?"  # ``**/``: zero or more whole directories


def _translate(pat: bytes, *, pathname: bool = False) -> bytes:
    """Translate a wildmatch pattern to a regex matching a whole subject.

    Never exponential: a ``*`` followed by a fixed-length piece and then by
    another ``*`` takes the piece's *first* occurrence, in an atomic group
    (``(?>[^/]*?piece)``). That is exact - two occurrences within one path
    component differ only by bytes the next ``*`` can absorb as well - and
    it keeps the regex engine from retrying every split: ``*a*a*a*a*a*a*a*b``
    took seconds to minutes on a 40-60 character name (any member can write
    a ``.gitignore`` or ``.secure`` pattern).
    """
    # pieces: _STAR, _DIRS, or (regex, fixed): fixed-length (one byte) or not
    pieces: list[bytes | tuple[bytes, bool]] = []
    i, n = 0, len(pat)
    while i < n:
        c = pat[i]
        if c == ord("*"):
            start = i
            while i < n and pat[i] == ord("*"):
                i += 1
            double = i - start >= 2
            at_start = start == 0 or pat[start - 1] == _SLASH
            rest = pat[i:]
            at_end = rest == b"" or rest.startswith(b"/") or rest.startswith(b"\\/")
            if pathname and double and at_start and at_end:
                if rest == b"":
                    pieces.append((b".*", False))
                elif rest.startswith(b"/"):
                    # `**/`: zero or more whole directories.
                    pieces.append(_DIRS)
                    i += 1
                else:
                    # `**\/` matches across slashes but has no zero-directory form.
                    pieces.append((b".*", False))
            else:
                pieces.append(_STAR)
        elif c == ord("?"):
            pieces.append((b"[^/]", True))
            i += 1
        elif c == ord("["):
            members, i = _bracket(pat, i + 1)
            pieces.append((_byte_class(members - {_SLASH}), True))
        elif c == _BACKSLASH:
            if i + 1 >= n:
                raise _Unmatchable
            pieces.append((re.escape(pat[i + 1 : i + 2]), True))
            i += 2
        else:
            pieces.append((re.escape(pat[i : i + 1]), True))
            i += 1
    out: list[bytes] = []
    k = 0
    while k < len(pieces):
        piece = pieces[k]
        k += 1
        if isinstance(piece, tuple):
            out.append(piece[0])
            continue
        run: list[bytes] = []  # the fixed-length piece after this wildcard
        while k < len(pieces):
            nxt = pieces[k]
            if not isinstance(nxt, tuple) or not nxt[1]:
                break
            run.append(nxt[0])
            k += 1
        # The same for `**/` between two `**/`: the first occurrence at a
        # directory boundary (the next `**/` absorbs the whole directories
        # between it and any later one).
        if run and k < len(pieces) and pieces[k] == piece:
            lazy = b"[^/]*?" if piece == _STAR else b"(?:|.*?/)"
            out.append(b"(?>" + lazy + b"".join(run) + b")")
        else:
            out.append(piece + b"".join(run))
    return b"".join(out)


def _bracket(pat: bytes, i: int) -> tuple[frozenset[int], int]:
    """Parse a bracket expression starting after ``[``; return its byte set and end."""
    n = len(pat)
    negated = i < n and pat[i] in (ord("!"), ord("^"))
    if negated:
        i += 1
    members: set[int] = set()
    prev: int | None = None
    first = True
    while True:
        if i >= n:
            raise _Unmatchable
        c = pat[i]
        if c == ord("]") and not first:
            i += 1
            break
        first = False
        if c == _BACKSLASH:
            i += 1
            if i >= n:
                raise _Unmatchable
            c = pat[i]
            members.add(c)
            prev = c
        elif c == ord("-") and prev is not None and i + 1 < n and pat[i + 1] != ord("]"):
            i += 1
            hi = pat[i]
            if hi == _BACKSLASH:
                i += 1
                if i >= n:
                    raise _Unmatchable
                hi = pat[i]
            members.update(range(prev, hi + 1))
            prev = None
        elif c == ord("[") and i + 1 < n and pat[i + 1] == ord(":"):
            end = pat.find(b"]", i + 2)
            if end < 0:
                raise _Unmatchable
            if end - (i + 2) < 1 or pat[end - 1] != ord(":"):
                # No ":]": the `[` is an ordinary member.
                members.add(c)
                prev = c
            else:
                name = pat[i + 2 : end - 1]
                if name not in _POSIX_CLASSES:
                    raise _Unmatchable
                members.update(_POSIX_CLASSES[name])
                prev = None
                i = end
        else:
            members.add(c)
            prev = c
        i += 1
    if negated:
        return frozenset(range(256)) - members, i
    return frozenset(members), i


def _byte_class(members: Iterable[int]) -> bytes:
    chosen = sorted(members)
    if not chosen:
        return _NEVER
    return b"[" + b"".join(b"\\x%02x" % b for b in chosen) + b"]"


class _Matcher:
    """Patterns in precedence order, compiled into two regexes (names and paths).

    Each regex's alternatives keep the precedence order, so its first
    matching alternative is its best pattern; the better of the two wins.
    """

    __slots__ = ("_name_rank", "_name_regex", "_negated", "_path_rank", "_path_regex")

    def __init__(self, patterns: Sequence[IgnorePattern]) -> None:
        self._negated = tuple(p.negated for p in patterns)
        names = [(rank, p) for rank, p in enumerate(patterns) if p.name_only]
        paths = [(rank, p) for rank, p in enumerate(patterns) if not p.name_only]
        self._name_regex = _alternation([p.regex for _, p in names])
        self._name_rank = tuple(rank for rank, _ in names)
        self._path_regex = _alternation([p.regex for _, p in paths])
        self._path_rank = tuple(rank for rank, _ in paths)

    def matches(self, path: bytes, name: bytes) -> bool:
        """True when the deciding pattern for ``path`` (named ``name``) excludes it."""
        best = len(self._negated)
        m = self._name_regex.fullmatch(name) if self._name_rank else None
        if m is not None and m.lastindex is not None:
            best = self._name_rank[m.lastindex - 1]
        m = self._path_regex.fullmatch(path) if self._path_rank else None
        if m is not None and m.lastindex is not None:
            best = min(best, self._path_rank[m.lastindex - 1])
        return best < len(self._negated) and not self._negated[best]


def _alternation(regexes: Sequence[bytes]) -> re.Pattern[bytes]:
    if not regexes:
        return re.compile(_NEVER)
    return re.compile(b"(?s:" + b"|".join(b"(" + r + b")" for r in regexes) + b")")


class IgnoreRules:
    """The ignore rules in force inside one directory of the folder.

    Immutable and cheap to share; build the root with :meth:`root` and the
    rules of subdirectories with :meth:`child`.
    """

    __slots__ = ("_dirs", "_files", "_git", "base", "patterns")

    def __init__(
        self, base: str, patterns: tuple[IgnorePattern, ...], *, ignore_git_dirs: bool
    ) -> None:
        self.base = base
        #: Patterns in precedence order: the first that matches decides.
        self.patterns = patterns
        self._git = ignore_git_dirs
        self._dirs = _Matcher(patterns)
        self._files = _Matcher([p for p in patterns if not p.dir_only])

    @classmethod
    def root(
        cls, extra_patterns: Sequence[str] = (), *, ignore_git_dirs: bool = True
    ) -> IgnoreRules:
        """Rules at the folder root before its ``.gitignore`` is read.

        ``extra_patterns`` are gitignore lines relative to the root with the
        lowest precedence (git's ``.git/info/exclude``); comments and blank
        lines are allowed. The root's own ``.gitignore`` is added with
        ``IgnoreRules.root(...).child("", text)``.
        """
        parsed = [parse_pattern(line, "") for line in split_lines("\n".join(extra_patterns))]
        return cls("", tuple(reversed(parsed)), ignore_git_dirs=ignore_git_dirs)

    def child(self, dir_rel: str, gitignore_text: str | None) -> IgnoreRules:
        """The rules in force for entries inside directory ``dir_rel``.

        ``dir_rel`` is ``""`` for the root, ``gitignore_text`` the content of
        its ``.gitignore`` (``None`` if it has none). The new patterns take
        precedence over all the inherited ones. Returns ``self`` when the text
        adds no pattern, so directories without a ``.gitignore`` cost nothing.
        """
        if self.base and not (dir_rel == self.base or dir_rel.startswith(self.base + "/")):
            raise ValueError(f"{dir_rel!r} is not inside {self.base!r}")
        lines = split_lines(gitignore_text) if gitignore_text else []
        if not lines:
            return self
        own = tuple(parse_pattern(line, dir_rel) for line in reversed(lines))
        return IgnoreRules(dir_rel, own + self.patterns, ignore_git_dirs=self._git)

    @property
    def ignore_git_dirs(self) -> bool:
        """Whether every directory named ``.git`` is ignored (see :meth:`root`)."""
        return self._git

    def is_ignored(self, rel_path: str, is_dir: bool) -> bool:
        """True when the entry ``rel_path`` (folder-relative) is ignored.

        ``rel_path`` must be an entry of this rules' directory (or deeper, if
        no ``.gitignore`` lies in between). It judges only the entry itself:
        the caller's walk must not descend into ignored directories.
        """
        name = rel_path.rpartition("/")[2]
        if is_dir and self._git and name == GIT_DIR_NAME:
            return True
        if rel_path == STATE_DIR:
            return True
        if not self.patterns:
            return False
        path = rel_path.encode("utf-8", "surrogateescape")
        matcher = self._dirs if is_dir else self._files
        return matcher.matches(path, name.encode("utf-8", "surrogateescape"))
