"""Ignore rules: each gitignore rule on its own, then agreement with git itself."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncron_p2p.index.ignore import IgnoreRules, split_lines

T = TypeVar("T")


def rules(text: str, *extra: str) -> IgnoreRules:
    return IgnoreRules.root(list(extra)).child("", text)


def walk(root: Path, base: IgnoreRules) -> set[str]:
    """The files a pruning top-down walk keeps: what the scanner will do."""
    kept: set[str] = set()

    def visit(dir_abs: Path, dir_rel: str, parent_rules: IgnoreRules) -> None:
        gitignore = dir_abs / ".gitignore"
        text = gitignore.read_text("utf-8") if gitignore.is_file() else None
        here = parent_rules.child(dir_rel, text)
        with os.scandir(dir_abs) as entries:
            for entry in entries:
                rel = f"{dir_rel}/{entry.name}" if dir_rel else entry.name
                is_dir = entry.is_dir(follow_symlinks=False)
                if here.is_ignored(rel, is_dir):
                    continue
                if is_dir:
                    visit(Path(entry.path), rel, here)
                else:
                    kept.add(rel)

    visit(root, "", base)
    return kept


# -- file syntax ---------------------------------------------------------------


def test_comments_blank_lines_crlf_bom_and_trailing_spaces() -> None:
    text = "\ufeff# comment\r\n\r\n   \nfoo  \r\nbar\\ \n\\#hash\n"
    assert split_lines(text) == ["foo", "bar\\ ", "\\#hash"]
    r = rules(text)
    assert r.is_ignored("foo", False)
    assert not r.is_ignored("foo  ", False)
    assert r.is_ignored("bar ", False)
    assert not r.is_ignored("bar", False)
    assert r.is_ignored("#hash", False)
    assert not r.is_ignored("# comment", False)


def test_escaped_bang_and_hash_are_literals() -> None:
    r = rules("\\!important\n\\#x\n")
    assert r.is_ignored("!important", False)
    assert not r.is_ignored("important", False)
    assert r.is_ignored("#x", False)


def test_trailing_backslash_and_unclosed_bracket_match_nothing() -> None:
    r = rules("foo\\\n[abc\n")
    for name in ("foo", "foo\\", "[abc", "a", "abc"):
        assert not r.is_ignored(name, False)


# -- patterns --------------------------------------------------------------------


def test_negation_and_last_match_wins() -> None:
    r = rules("*.log\n!keep.log\n")
    assert r.is_ignored("x.log", False)
    assert not r.is_ignored("keep.log", False)
    assert not r.is_ignored("d/keep.log", False)
    r = rules("!keep.log\n*.log\n")
    assert r.is_ignored("keep.log", False)


def test_directory_only_patterns() -> None:
    r = rules("build/\n")
    assert r.is_ignored("build", True)
    assert r.is_ignored("a/b/build", True)
    assert not r.is_ignored("build", False)
    r = rules("*\n!*/\n")  # the classic "only directories survive" idiom
    assert not r.is_ignored("d", True)
    assert r.is_ignored("d/f", False)


def test_unanchored_name_matches_at_any_depth_below_its_gitignore() -> None:
    r = rules("", "top").child("sub", "name\n")
    assert r.is_ignored("sub/name", False)
    assert r.is_ignored("sub/x/y/name", True)
    assert r.is_ignored("sub/x/top", False)  # root-level extra pattern still applies


def test_anchored_patterns_are_relative_to_their_gitignore() -> None:
    r = rules("/top\na/b\n")
    assert r.is_ignored("top", False)
    assert not r.is_ignored("d/top", False)
    assert r.is_ignored("a/b", False)
    assert not r.is_ignored("x/a/b", False)
    sub = IgnoreRules.root().child("sub", "/only\na/b\n")
    assert sub.is_ignored("sub/only", False)
    assert not sub.is_ignored("sub/d/only", False)
    assert sub.is_ignored("sub/a/b", False)
    assert not sub.is_ignored("a/b", False)
    assert not sub.is_ignored("sub/x/a/b", False)


def test_double_star_forms() -> None:
    r = rules("**/lead\nmid/**/end\ntrail/**\n")
    assert r.is_ignored("lead", False) and r.is_ignored("a/b/lead", False)
    assert r.is_ignored("mid/end", False) and r.is_ignored("mid/a/b/end", False)
    assert not r.is_ignored("mid/aend", False)
    assert not r.is_ignored("trail", True)  # `trail/**` matches inside, not the dir
    assert r.is_ignored("trail/x", False) and r.is_ignored("trail/x/y", True)
    assert rules("**\n").is_ignored("any/thing", False)
    # `**` not delimited by slashes is an ordinary `*`
    r = rules("x/a**b\n")
    assert r.is_ignored("x/azzb", False)
    assert not r.is_ignored("x/a/b", False)


def test_literal_prefix_quirk_matches_git() -> None:
    # git compares the literal prefix first; the `**` that follows counts as leading.
    r = rules("a**/b\n")
    assert r.is_ignored("ax/y/b", False)
    assert r.is_ignored("a/b", False)


def test_single_star_and_question_mark_stop_at_slash() -> None:
    r = rules("d/*.c\nq/?\n")
    assert r.is_ignored("d/x.c", False)
    assert not r.is_ignored("d/e/x.c", False)
    assert r.is_ignored("q/z", False)
    assert not r.is_ignored("q/zz", False)


def test_character_classes() -> None:
    r = rules("[a-c]1\n[!a-c]2\n[]x]3\n[[:digit:]]4\n[^q]5\n[z-a]6\n")
    assert r.is_ignored("b1", False) and not r.is_ignored("d1", False)
    assert r.is_ignored("d2", False) and not r.is_ignored("a2", False)
    assert r.is_ignored("]3", False) and r.is_ignored("x3", False)
    assert r.is_ignored("74", False) and not r.is_ignored("x4", False)
    assert r.is_ignored("a5", False) and not r.is_ignored("q5", False)
    # git adds `z` as a member before it sees the (empty, reversed) range
    assert r.is_ignored("z6", False) and not r.is_ignored("a6", False)
    assert not rules("d[/]x\n").is_ignored("d/x", False)


def test_matching_is_on_utf8_bytes_like_git() -> None:
    r = rules("?\n")
    assert r.is_ignored("a", False)
    assert not r.is_ignored("é", False)  # two bytes in UTF-8
    assert rules("??\n").is_ignored("é", False)
    assert rules("café\n").is_ignored("d/café", True)


# -- precedence --------------------------------------------------------------------


def test_deeper_gitignore_overrides_parent() -> None:
    root = rules("*.log\n")
    sub = root.child("sub", "!*.log\n")
    assert root.is_ignored("x.log", False)
    assert not sub.is_ignored("sub/x.log", False)
    again = sub.child("sub/deeper", "x.log\n")
    assert again.is_ignored("sub/deeper/x.log", False)
    assert not again.is_ignored("sub/deeper/y.log", False)


def test_extra_patterns_have_the_lowest_precedence() -> None:
    r = rules("!keep.tmp\n", "*.tmp")
    assert r.is_ignored("x.tmp", False)
    assert not r.is_ignored("keep.tmp", False)


def test_excluded_directory_cannot_be_reentered(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("k")
    (tmp_path / "other.txt").write_text("o")
    (tmp_path / ".gitignore").write_text("out/\n!out/keep.txt\n")
    r = rules("out/\n!out/keep.txt\n")
    assert r.is_ignored("out", True)
    # The entry itself is not matched by an excluding pattern ...
    assert not r.is_ignored("out/keep.txt", False)
    # ... but the walk never gets there, exactly like git.
    assert walk(tmp_path, IgnoreRules.root()) == {".gitignore", "other.txt"}


def test_state_dir_and_git_dirs() -> None:
    r = rules("!.syncron\n!.git\n!.git/\n")
    assert r.is_ignored(".syncron", True)
    assert r.is_ignored(".syncron", False)
    assert not r.is_ignored("d/.syncron", True)
    assert r.is_ignored(".git", True) and r.is_ignored("d/.git", True)
    assert not r.is_ignored(".git", False)
    keep_git = IgnoreRules.root(ignore_git_dirs=False)
    assert not keep_git.is_ignored(".git", True)
    assert keep_git.child("", "x\n").is_ignored(".syncron", True)
    assert not keep_git.child("", "x\n").is_ignored("d/.git", True)


def test_child_without_patterns_is_shared_and_bad_dir_refused() -> None:
    r = rules("x\n")
    assert r.child("d", None) is r
    assert r.child("d", "# only a comment\n\n") is r
    sub = r.child("d", "y\n")
    with pytest.raises(ValueError):
        sub.child("elsewhere", "z\n")
    assert sub.child("d/e", "z\n").base == "d/e"


# -- the git oracle ----------------------------------------------------------------

NAMES = ["a", "b", "ab", "x.log", "keep.log", "build", ".hidden", "sp ", "#h", "!b", "é", "[x]"]
SEGMENTS = [
    "a", "b", "ab", "*", "?", "a*", "*.log", "keep.log", "build", "[a-c]", "[!a]*", "[]x]",
    "[[:alpha:]]*", "**", "a**", "\\#h", "\\!b", "sp\\ ", "sp ", "é", "?b", "\\[x]", "[x]",
    ".hidden", "x.*",
]  # fmt: skip
GIT = shutil.which("git")


def make_case(
    choose: Callable[[Sequence[T]], T], integer: Callable[[int, int], int]
) -> tuple[dict[str, str], list[str], list[str]]:
    """A random tree: files (path -> content), the dirs holding a .gitignore, extras.

    Returns ``(files, dirs, extra_patterns)``; .gitignore files are among ``files``.
    """

    def pattern() -> str:
        parts = [choose(SEGMENTS) for _ in range(integer(1, 3))]
        text = "/".join(parts)
        text = choose(["", "", "/"]) + text + choose(["", "", "/"])
        return choose(["", "", "!"]) + text

    dirs = [""]
    for _ in range(integer(1, 7)):
        parent = choose(dirs)
        if parent.count("/") >= 2:
            continue
        name = choose(NAMES)
        d = f"{parent}/{name}" if parent else name
        if d not in dirs:
            dirs.append(d)
    files: dict[str, str] = {}
    dir_set = set(dirs)
    for d in dirs:
        for _ in range(integer(1, 4)):
            name = choose(NAMES)
            f = f"{d}/{name}" if d else name
            if f not in dir_set:
                files[f] = "x"
    for d in dirs:
        if integer(0, 2) > 0:
            lines = [pattern() for _ in range(integer(1, 6))]
            lines.insert(integer(0, len(lines)), choose(["# c", "", "  ", "#!x"]))
            files[f"{d}/.gitignore" if d else ".gitignore"] = "\n".join(lines) + "\n"
    extra = [pattern() for _ in range(integer(0, 2))]
    return files, dirs, extra


def git_untracked(root: Path) -> set[str]:
    assert GIT is not None
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(root),
        "XDG_CONFIG_HOME": str(root / ".git" / "xdg"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "LC_ALL": "C",
    }
    out = subprocess.run(
        [GIT, "ls-files", "--others", "--exclude-standard", "-z"],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
    ).stdout
    return {p.decode("utf-8") for p in out.split(b"\0") if p}


def check_against_git(root: Path, files: dict[str, str], dirs: list[str], extra: list[str]) -> None:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for d in dirs[1:]:
        (root / d).mkdir(parents=True, exist_ok=True)
    for f, content in files.items():
        (root / f).write_text(content, "utf-8")
    assert GIT is not None
    subprocess.run([GIT, "init", "-q"], cwd=root, check=True, env={"PATH": os.environ["PATH"]})
    (root / ".git" / "info").mkdir(exist_ok=True)
    (root / ".git" / "info" / "exclude").write_text("".join(p + "\n" for p in extra), "utf-8")
    expected = git_untracked(root)
    got = walk(root, IgnoreRules.root(extra))
    gitignores = {f: files[f] for f in files if f.endswith(".gitignore")}
    assert got == expected, f"extra={extra!r} gitignores={gitignores!r}"


needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed")


@needs_git
@pytest.mark.parametrize("seed", range(40))
def test_agrees_with_git_seeded(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    files, dirs, extra = make_case(rng.choice, rng.randint)
    check_against_git(tmp_path / "tree", files, dirs, extra)


@st.composite
def cases(draw: st.DrawFn) -> tuple[dict[str, str], list[str], list[str]]:
    return make_case(
        lambda seq: draw(st.sampled_from(seq)),
        lambda lo, hi: draw(st.integers(lo, hi)),
    )


@needs_git
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=cases())
def test_agrees_with_git_hypothesis(
    tmp_path: Path, case: tuple[dict[str, str], list[str], list[str]]
) -> None:
    files, dirs, extra = case
    check_against_git(tmp_path / "tree", files, dirs, extra)


# -- no catastrophic backtracking ------------------------------------------------------


def _glob_reference(pattern: str, name: str) -> bool:
    """Wildmatch of one path component, by dynamic programming (no regex)."""
    ok = [True] + [False] * len(name)  # ok[j]: pattern so far matches name[:j]
    for c in pattern:
        if c == "*":
            for j in range(1, len(name) + 1):
                ok[j] = ok[j] or ok[j - 1]
        else:
            ok = [False] + [ok[j] and (c == "?" or c == name[j]) for j in range(len(name))]
    return ok[len(name)]


@settings(max_examples=400, deadline=None)
@given(st.text("ab*?", min_size=1, max_size=9), st.text("ab", max_size=12))
def test_stars_match_exactly_as_a_reference_glob(pattern: str, name: str) -> None:
    rules = IgnoreRules.root(ignore_git_dirs=False).child("", pattern + "\n")
    assert rules.is_ignored(name, False) == _glob_reference(pattern, name)
    assert rules.is_ignored(f"d/{name}", False) == _glob_reference(pattern, name)


def _path_reference(parts: list[str], names: list[str]) -> bool:
    """An anchored pattern's components against a path's: ``**`` is any number
    of whole components (at the end: at least one, "everything inside")."""
    if not parts:
        return not names
    if parts[0] == "**":
        if len(parts) == 1:
            return len(names) >= 1
        return any(_path_reference(parts[1:], names[i:]) for i in range(len(names) + 1))
    if not names or not _glob_reference(parts[0], names[0]):
        return False
    return _path_reference(parts[1:], names[1:])


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "b", "*", "**", "a*", "*b", "?"]), min_size=2, max_size=6),
    st.lists(st.sampled_from(["a", "b", "ab", "ba"]), min_size=1, max_size=7),
)
def test_double_stars_match_exactly_as_a_reference(parts: list[str], names: list[str]) -> None:
    rules = IgnoreRules.root(ignore_git_dirs=False).child("", "/".join(parts) + "\n")
    assert rules.is_ignored("/".join(names), False) == _path_reference(parts, names)


def test_a_pattern_with_many_stars_cannot_stall_a_scan() -> None:
    """`*a*a*a*a*a*a*a*a*b` took seconds to minutes on a 40-60 character name
    with backtracking regexes (any member can write one into .gitignore or
    .secure); in a child process so a regression fails instead of hanging."""
    code = (
        "from syncron_p2p.index.ignore import IgnoreRules\n"
        "r = IgnoreRules.root(ignore_git_dirs=False).child('', '*a*a*a*a*a*a*a*a*b\\n')\n"
        "assert not r.is_ignored('a' * 200, False)\n"
        "assert r.is_ignored('a' * 200 + 'b', False)\n"
        "r = IgnoreRules.root(ignore_git_dirs=False).child('', '**/a/**/a/**/a/**/a/**/b\\n')\n"
        "assert not r.is_ignored('/'.join(['a'] * 250), False)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
